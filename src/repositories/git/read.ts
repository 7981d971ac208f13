import { spawn } from 'node:child_process';
import { PassThrough, Readable } from 'node:stream';
import tar from 'tar-stream';
import type { FetchSettings, Location } from '../../config/index.js';
import { describeLocation } from '../../config/index.js';
import { FetchFailure } from '../../fetch/errors.js';
import { watchProcess } from '../process-output.js';
import { notFound, readIndexBody, readIndexThrough } from '../read-index.js';
import type { FetchRepository } from '../types.js';

/** Every index file of a repository (packages.checksum, packages.json, its .sig) in one archive. */
const INDEX_PATHSPEC = ':(glob)packages.*';

/**
 * A git repository read with `git archive --remote`, which answers with a tar. git tells a
 * missing path only in words, so the index files are asked for by one pattern (whichever of
 * them the repository has come back; a repository with none of them is refused) and a package
 * only once its index names it.
 */
export function gitRepository(location: Extract<Location, { kind: 'git' }>, settings: FetchSettings): FetchRepository {
  const name = describeLocation(location);
  const ref = location.branch ?? 'HEAD';
  const archive = (pathspec: string, what: string, timeoutMs: number): { tar: tar.Extract; out: PassThrough } => {
    const child = spawn('git', ['archive', `--remote=${location.url}`, ref, '--', pathspec], { stdio: ['ignore', 'pipe', 'pipe'] });
    const extract = tar.extract();
    const out = new PassThrough();
    watchProcess(child, out, what, { ...settings, timeoutMs });
    child.stdout.pipe(extract);
    extract.on('error', (error) => out.destroy(new FetchFailure(`${what}: git sent a bad archive (${error.message})`, { transient: true, down: false })));
    return { tar: extract, out };
  };
  /** The one file's body out of its archive. */
  const stream = (file: string, timeoutMs = settings.timeoutMs): Promise<Readable> => new Promise((resolve, reject) => {
    const what = `${name}/${file}`;
    const { tar: extract, out } = archive(file, what, timeoutMs);
    out.once('error', reject);
    let found = false;
    extract.on('entry', (header, body, next) => {
      if (header.name !== file || header.type !== 'file' || found) {
        body.resume();
        body.on('end', next);
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
    extract.on('finish', () => {
      if (found) out.end();
      else out.destroy(notFound(what));
    });
  });
  /** The index files the repository has, by name, read whole (each within the index bound). */
  const indexFiles = (): Promise<Map<string, Buffer>> => new Promise((resolve, reject) => {
    const { tar: extract, out } = archive(INDEX_PATHSPEC, `${name}/packages.*`, settings.timeoutMs);
    const files = new Map<string, Buffer>();
    out.once('error', reject);
    extract.on('entry', (header, body, next) => {
      if (header.type !== 'file' || header.name.includes('/')) {
        body.resume();
        body.on('end', next);
        return;
      }
      readIndexBody(body, `${name}/${header.name}`).then((bytes) => {
        files.set(header.name, bytes);
        next();
      }, (error: unknown) => { out.destroy(error instanceof Error ? error : new Error(String(error))); });
    });
    extract.on('finish', () => {
      // The files are only believed once git exited 0 (watchProcess ends `out` then).
      out.resume();
      out.once('end', () => { resolve(files); });
      out.end();
    });
  });
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
