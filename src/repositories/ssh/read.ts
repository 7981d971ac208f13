import path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import type { FetchSettings, Location } from '../../config/index.js';
import { describeLocation } from '../../config/index.js';
import { describeError } from '../../errors.js';
import { FetchFailure } from '../read-failure.js';
import type { SshHost } from '../../ssh/session.js';
import { watchProcess } from '../process-output.js';
import { readIndexThrough } from '../read-index.js';
import type { FetchRepository } from '../types.js';

/** The exit status of READ_FROM for a file that is not there. */
const NOT_FOUND_EXIT = 44;
/** $1 the file, $2 the byte to start at, 1-based (tail -c +N): the resume point. */
const READ_FROM = `[ -f "$1" ] || exit ${NOT_FOUND_EXIT.toString()}
exec tail -c "+$2" -- "$1"`;

export function sshRepository(location: Extract<Location, { kind: 'ssh' }>, settings: FetchSettings, host: SshHost): FetchRepository {
  const name = describeLocation(location);
  const inDir = (file: string): string => path.posix.join(location.path, file);
  const stream = (file: string, offset: number, timeoutMs = settings.timeoutMs): Readable => {
    const out = new PassThrough();
    const what = `${name}/${file}`;
    const started = performance.now();
    host.spawn(['sh', '-c', READ_FROM, 'sh', inDir(file), (offset + 1).toString()], timeoutMs).then(
      (child) => {
        // Given up on while ssh was logging in (the budget ran out): nobody reads this any more.
        if (out.destroyed) {
          child.kill('SIGKILL');
          return;
        }
        child.stdin?.end();
        // Ended by watchProcess only once ssh exits 0: a missing file or a dropped connection
        // is an error, never a short or empty file.
        child.stdout?.pipe(out, { end: false });
        watchProcess(child, out, what, { ...settings, timeoutMs }, { endOnSuccess: true, notFoundExit: NOT_FOUND_EXIT });
      },
      (error: unknown) => {
        // The command never started: ssh could not connect or log in, or the account's start-up
        // files stopped it. As in watchProcess, only the time it took tells a slow failure.
        const slow = performance.now() - started >= settings.connectTimeoutMs;
        out.destroy(new FetchFailure(`${what}: ${describeError(error)}`, { transient: false, down: slow, cause: error }));
      },
    );
    return out;
  };
  return {
    name,
    readIndex: (trust) => readIndexThrough(name, (file) => Promise.resolve(stream(file, 0)), trust),
    open: (file, offset, timeoutMs) => Promise.resolve({ stream: stream(file, offset, timeoutMs), start: offset }),
  };
}
