import { execFile, spawn } from 'node:child_process';
import { PassThrough, Readable } from 'node:stream';
import type tar from 'tar-stream';
import type { FetchSettings, Location } from '../../config/index.js';
import { describeLocation } from '../../config/index.js';
import { FetchFailure } from '../read-failure.js';
import { CHECKSUM_FILE, MANIFEST_FILE, SIGNATURE_FILE } from '../../packages/index.js';
import { whenClosed } from '../../ssh/session.js';
import { watchProcess } from '../process-output.js';
import { notFound, readIndexBody, readIndexThrough } from '../read-index.js';
import type { FetchRepository } from '../types.js';

/** Every index file of a repository (packages.checksum, packages.json, its .sig) in one archive. */
const INDEX_PATHSPEC = ':(glob)packages.*';
/** The files of that archive that are read: a packages.json.bak or packages.tar the glob also brings are not. */
const INDEX_FILES: ReadonlySet<string> = new Set([CHECKSUM_FILE, MANIFEST_FILE, SIGNATURE_FILE]);

/** What git exits with for any fatal error: a server it cannot reach, a refused key, a missing repository. */
const GIT_FATAL_EXIT = 128;

/** Per folder and git environment: whether git's config (~/.gitconfig, /etc/gitconfig, the folder's repository) names an ssh command. */
const configuredSsh = new Map<string, Promise<boolean>>();

function hasConfiguredSshCommand(): Promise<boolean> {
  const key = JSON.stringify([
    process.cwd(),
    ...Object.entries(process.env).filter(([name]) => name.startsWith('GIT_') || name === 'HOME' || name === 'XDG_CONFIG_HOME'),
  ]);
  let known = configuredSsh.get(key);
  if (!known) {
    known = new Promise((resolve) => {
      execFile('git', ['config', '--get', 'core.sshCommand'], (error, stdout) => {
        resolve(!error && stdout.trim() !== '');
      });
    });
    configuredSsh.set(key, known);
  }
  return known;
}

/**
 * git's environment: over ssh, fetch_connect_timeout bounds the connection and its handshake
 * (ssh's ConnectTimeout) and no password is asked for (BatchMode); never a prompt on a
 * terminal. An ssh command of the user's own (GIT_SSH_COMMAND, GIT_SSH, or core.sshCommand
 * in git's config, which GIT_SSH_COMMAND would override) is left as it is. git:// has no
 * connect time limit of its own: fetch_timeout bounds it.
 */
async function gitEnvironment(settings: FetchSettings): Promise<NodeJS.ProcessEnv> {
  const env: NodeJS.ProcessEnv = { ...process.env, GIT_TERMINAL_PROMPT: '0' };
  if (env.GIT_SSH_COMMAND === undefined && env.GIT_SSH === undefined && !(await hasConfiguredSshCommand())) {
    env.GIT_SSH_COMMAND = `ssh -o ConnectTimeout=${String(Math.max(1, Math.ceil(settings.connectTimeoutMs / 1000)))} -o BatchMode=yes`;
  }
  return env;
}

/**
 * A git repository read with `git archive --remote`, which answers with a tar. git tells a
 * missing path only in words, so the index files are asked for by one pattern (whichever of
 * them the repository has come back; a repository with none of them is refused) and a package
 * only once its index names it.
 */
export function gitRepository(location: Extract<Location, { kind: 'git' }>, settings: FetchSettings): FetchRepository {
  const name = describeLocation(location);
  const ref = location.branch ?? 'HEAD';
  /**
   * `git archive` of `pathspec` as tar entries; `complete` is called once the tar has ended
   * AND git has exited 0. Until then nothing is believed: git reports a server it cannot
   * reach, and a path that matches nothing, by exiting non-zero after an empty archive, and
   * watchProcess then fails `out` with git's words quoted.
   */
  const archive = async (pathspec: string, what: string, timeoutMs: number, complete: () => void): Promise<{ tar: tar.Extract; out: PassThrough }> => {
    // Loaded here, not with the module: every command that may name a git location loads this
    // one, and tar-stream alone adds about 12 ms to a start that reads no git repository.
    const { default: tarStream } = await import('tar-stream');
    const extract = tarStream.extract();
    const out = new PassThrough();
    const start = (env: NodeJS.ProcessEnv): void => {
      if (out.destroyed) return;
      const child = spawn('git', ['archive', `--remote=${location.url}`, ref, '--', pathspec], { stdio: ['ignore', 'pipe', 'pipe'], env });
      watchProcess(child, out, what, { ...settings, timeoutMs }, { fatalExit: GIT_FATAL_EXIT });
      let waitingFor = 2;
      const oneDone = (): void => {
        waitingFor -= 1;
        if (waitingFor === 0 && !out.destroyed) complete();
      };
      void whenClosed(child).then(({ code }) => {
        if (code === 0) oneDone();
      });
      extract.on('finish', oneDone);
      child.stdout.pipe(extract);
    };
    void gitEnvironment(settings).then(start);
    extract.on('error', (error) => out.destroy(new FetchFailure(`${what}: git sent a bad archive (${error.message})`, { transient: true, down: false })));
    return { tar: extract, out };
  };
  /** The one file's body out of its archive. */
  const stream = async (file: string, timeoutMs = settings.timeoutMs): Promise<Readable> => {
    const what = `${name}/${file}`;
    let found = false;
    const { tar: extract, out } = await archive(file, what, timeoutMs, () => {
      if (found) out.end();
      else out.destroy(notFound(what));
    });
    return new Promise((resolve, reject) => {
      out.once('error', reject);
      extract.on('entry', (header, body, next) => {
        if (header.name !== file || header.type !== 'file' || found) {
          skip(body, next);
          return;
        }
        found = true;
        resolve(out);
        body.on('data', (chunk: unknown) => {
          if (!out.write(chunk)) {
            body.pause();
            out.once('drain', () => body.resume());
          }
        });
        body.on('end', next);
      });
    });
  };
  /** The index files the repository has, by name, read whole (each within the index bound); other packages.* files are passed over unread. */
  const indexFiles = async (): Promise<Map<string, Buffer>> => {
    const files = new Map<string, Buffer>();
    let done: (() => void) | undefined;
    const { tar: extract, out } = await archive(INDEX_PATHSPEC, `${name}/packages.*`, settings.timeoutMs, () => {
      done?.();
      out.end();
    });
    return new Promise((resolve, reject) => {
      done = () => {
        resolve(files);
      };
      out.once('error', reject);
      extract.on('entry', (header, body, next) => {
        if (header.type !== 'file' || !INDEX_FILES.has(header.name)) {
          skip(body, next);
          return;
        }
        readIndexBody(body, `${name}/${header.name}`).then(
          (bytes) => {
            files.set(header.name, bytes);
            next();
          },
          (error: unknown) => {
            out.destroy(error instanceof Error ? error : new Error(String(error)));
          },
        );
      });
    });
  };
  return {
    name,
    async readIndex(trust) {
      const files = await indexFiles();
      const open = (file: string): Promise<Readable> => {
        const bytes = files.get(file);
        return bytes === undefined ? Promise.reject(notFound(`${name}/${file}`)) : Promise.resolve(Readable.from([bytes]));
      };
      return readIndexThrough(name, open, trust);
    },
    // git archive cannot start in the middle: every try starts at 0.
    open: async (file, _offset, timeoutMs) => ({ stream: await stream(file, timeoutMs), start: 0 }),
  };
}

function skip(body: { resume(): unknown; on(event: 'end', listener: () => void): unknown }, next: () => void): void {
  body.resume();
  body.on('end', next);
}
