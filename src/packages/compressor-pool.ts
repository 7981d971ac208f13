import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Compression } from '../config/index.js';
import { AutotestError } from '../errors.js';
import { compressorCommand } from './compress.js';

/**
 * A small shell that runs the compressor once per request, each run reading a finished tar
 * file and creating a new file (`set -C`: never over an existing one; umask: 0644). A request
 * is two lines (source, destination), the answer one line (the compressor's exit status).
 *
 * Why a shell in between: every spawn from the packager forks a Node.js process of about
 * 100 MB, copying its page tables on the event loop (about 4 ms each, 0.5 s for the 135
 * packages of a real client tree), while the shell forks in a fraction of that, on a core of
 * its own. A compressor reading a file through stdin writes the same bytes as one fed by a
 * pipe (checked for lbzip2, bzip2 and zstd), so the way a package goes never changes its bytes.
 */
const HELPER_SCRIPT = [
  'err=$1; shift',
  'umask 022; set -C',
  'while IFS= read -r src && IFS= read -r dest; do',
  '  if "$@" <"$src" >"$dest" 2>|"$err"; then echo 0; else echo "$?"; fi',
  'done',
].join('\n');

/** Compressors run from long-lived helpers, one compression at a time each. */
export interface CompressorPool {
  /** The compressor, for messages and the manifest. */
  readonly tool: string;
  /** Compresses the file `source` into `dest`, created (never overwritten) with mode 0644. */
  compressFile(source: string, dest: string): Promise<void>;
  /** Ends the helpers once their work is done. */
  close(): Promise<void>;
}

interface Helper {
  child: ChildProcessWithoutNullStreams;
  errFile: string;
  /** The answer awaited, if a request is out. */
  waiting: ((line: string | Error) => void) | undefined;
  /** The end of what the shell itself wrote to stderr (a refused redirection, say). */
  stderr: string;
  exited: Promise<void>;
  dead: boolean;
}

function startHelper(command: string, args: string[], errFile: string): Helper {
  const child = spawn('sh', ['-c', HELPER_SCRIPT, 'sh', errFile, command, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  const helper: Helper = { child, errFile, waiting: undefined, stderr: '', exited: Promise.resolve(), dead: false };
  const answer = (line: string | Error): void => {
    const waiting = helper.waiting;
    helper.waiting = undefined;
    waiting?.(line);
  };
  let pending = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    pending += chunk;
    let newline = pending.indexOf('\n');
    while (newline !== -1) {
      answer(pending.slice(0, newline));
      pending = pending.slice(newline + 1);
      newline = pending.indexOf('\n');
    }
  });
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => {
    helper.stderr = (helper.stderr + chunk).slice(-2048);
  });
  // A helper that exits stops stdin early; what it was asked fails through its answer.
  child.stdin.on('error', () => undefined);
  helper.exited = new Promise((resolve) => {
    const end = (why: string): void => {
      helper.dead = true;
      answer(new AutotestError('ERR_TOOL', `the shell running ${command} stopped (${why})${helper.stderr ? `: ${helper.stderr.trim()}` : ''}`));
      resolve();
    };
    child.on('error', (error) => { end(error.message); });
    child.on('close', (code, signal) => { end(signal ? `killed by ${signal}` : `exit code ${String(code)}`); });
  });
  return helper;
}

/**
 * Up to `size` helpers (started when first needed, replaced when one dies), each running
 * `compression`'s compressor on one thread; `workDir` holds their stderr files.
 */
export async function createCompressorPool(compression: Exclude<Compression, 'gzip'>, options: { size: number; workDir: string }): Promise<CompressorPool> {
  const { command, args } = await compressorCommand(compression, { threads: 1 });
  const idle: Helper[] = [];
  const all = new Set<Helper>();
  const queue: ((helper: Helper) => void)[] = [];
  let started = 0;
  let closed = false;

  const acquire = async (): Promise<Helper> => {
    for (let helper = idle.pop(); helper; helper = idle.pop()) {
      if (!helper.dead) return helper;
      all.delete(helper);
    }
    if (all.size < options.size) {
      started += 1;
      const helper = startHelper(command, args, path.join(options.workDir, `compressor-${started}.err`));
      all.add(helper);
      return helper;
    }
    return new Promise((resolve) => { queue.push(resolve); });
  };
  const release = (helper: Helper): void => {
    if (helper.dead) all.delete(helper);
    const next = queue.shift();
    if (!next) {
      if (!helper.dead) idle.push(helper);
      return;
    }
    if (!helper.dead) next(helper);
    else void acquire().then(next);
  };

  return {
    tool: command,
    async compressFile(source, dest) {
      if (closed) throw new Error('compressor pool used after close');
      // Programmer error: our staging paths never hold a newline, which would split the request.
      if (source.includes('\n') || dest.includes('\n')) throw new Error(`a path with a newline cannot be sent to the compressor: ${JSON.stringify(source)}`);
      const helper = await acquire();
      try {
        const answer = await new Promise<string | Error>((resolve) => {
          helper.waiting = resolve;
          helper.child.stdin.write(`${source}\n${dest}\n`);
        });
        if (answer instanceof Error) throw answer;
        if (answer !== '0') {
          const status = Number(answer);
          const why = status > 128 ? `killed by signal ${String(status - 128)}` : `exit code ${answer}`;
          const said = (await readFile(helper.errFile, 'utf8').catch(() => '')).trim() || helper.stderr.trim();
          throw new AutotestError('ERR_TOOL', `${command} failed to compress ${source} (${why})${said ? `: ${said.slice(0, 2048)}` : ''}`);
        }
      } finally {
        release(helper);
      }
    },
    async close() {
      closed = true;
      for (const helper of all) helper.child.stdin.end();
      await Promise.all([...all].map((helper) => helper.exited));
      await Promise.all([...all].map((helper) => rm(helper.errFile, { force: true })));
    },
  };
}
