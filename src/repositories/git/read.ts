import { spawn } from 'node:child_process';
import { PassThrough, type Readable } from 'node:stream';
import tar from 'tar-stream';
import type { FetchSettings, Location } from '../../config/index.js';
import { describeLocation } from '../../config/index.js';
import { FetchFailure } from '../../fetch/errors.js';
import { watchProcess } from '../process-output.js';
import { notFound, readIndexThrough } from '../read-index.js';
import type { FetchRepository } from '../types.js';

export function gitRepository(location: Extract<Location, { kind: 'git' }>, settings: FetchSettings): FetchRepository {
  const name = describeLocation(location);
  const ref = location.branch ?? 'HEAD';
  /** `git archive --remote` answers with a tar holding the one file; its body is the package. */
  const stream = (file: string, timeoutMs = settings.timeoutMs): Promise<Readable> => new Promise((resolve, reject) => {
    const what = `${name}/${file}`;
    const child = spawn('git', ['archive', `--remote=${location.url}`, ref, '--', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    const extract = tar.extract();
    const out = new PassThrough();
    watchProcess(child, out, what, { ...settings, timeoutMs });
    out.once('error', reject);
    child.stdout.pipe(extract);
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
    extract.on('error', (error) => out.destroy(new FetchFailure(`${what}: git sent a bad archive (${error.message})`, { transient: true, down: false })));
  });
  return {
    name,
    readIndex: (trust) => readIndexThrough(name, (file) => stream(file), trust),
    // git archive cannot start in the middle: every try starts at 0.
    open: async (file, _offset, timeoutMs) => ({ stream: await stream(file, timeoutMs), start: 0 }),
  };
}

