import { createHash } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { AutotestError } from '../errors.js';
import { checkFileName, type PackageType } from '../packages/index.js';

/** Marks a request line on the job's standard output; status lines never start with it. */
export const CHANNEL_REQUEST_PREFIX = '\x1eAUTOTEST-PACKAGE-REQUEST ';

export interface ChannelAnswer {
  file: string;
  md5: string;
  bytes: number;
  seconds: number;
}

interface Header {
  id: number;
  file?: string;
  size?: number;
  md5?: string;
  sha256?: string;
  error?: string;
}

/**
 * The client's end of the autoserv channel: asks autoserv (over the job's own standard output)
 * for a package that no repository has, and reads the answer from standard input: a JSON
 * header line, then exactly `size` bytes, checked against the sha256 and md5 it announced.
 * One request at a time; every wait has a timeout.
 */
export function createChannelClient(input: Readable, output: Writable, timeoutMs: number) {
  let buffered = Buffer.alloc(0);
  let waiting: (() => void) | undefined;
  let ended = false;
  input.on('data', (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    waiting?.();
  });
  input.on('end', () => {
    ended = true;
    waiting?.();
  });
  input.on('error', () => {
    ended = true;
    waiting?.();
  });
  input.pause();

  const more = (deadline: number): Promise<void> =>
    new Promise((resolve, reject) => {
      if (ended) {
        reject(new AutotestError('ERR_FETCH', 'autoserv channel: closed'));
        return;
      }
      const timer = setTimeout(
        () => {
          waiting = undefined;
          reject(
            new AutotestError('ERR_FETCH', 'autoserv channel: no answer within fetch_timeout', {
              hint: 'autoserv may be packing a large package; raise fetch_timeout, or publish the package to a repository',
            }),
          );
        },
        Math.max(0, deadline - Date.now()),
      );
      waiting = () => {
        clearTimeout(timer);
        waiting = undefined;
        resolve();
      };
      input.resume();
    });

  let nextId = 1;
  let queue = Promise.resolve();

  const request = async (type: PackageType, name: string, cacheDir: string): Promise<ChannelAnswer> => {
    const started = performance.now();
    const id = nextId++;
    const deadline = Date.now() + timeoutMs;
    output.write(`${CHANNEL_REQUEST_PREFIX}${JSON.stringify({ id, type, name })}\n`);
    let newline = buffered.indexOf(10);
    while (newline === -1) {
      if (buffered.length > 65536) throw new AutotestError('ERR_FETCH', 'autoserv channel: header too long');
      await more(deadline);
      newline = buffered.indexOf(10);
    }
    const header = JSON.parse(buffered.subarray(0, newline).toString('utf8')) as Header;
    buffered = buffered.subarray(newline + 1);
    if (header.id !== id) throw new AutotestError('ERR_FETCH', `autoserv channel: answer ${String(header.id)} to request ${id.toString()}`);
    if (header.error !== undefined) throw new AutotestError('ERR_FETCH', `autoserv: ${header.error}`);
    const { size, md5, sha256 } = header;
    const file = checkFileName(header.file ?? '');
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0 || typeof md5 !== 'string' || typeof sha256 !== 'string') {
      throw new AutotestError('ERR_FETCH', 'autoserv channel: a malformed answer');
    }
    const dest = path.join(cacheDir, file);
    const part = `${dest}.channel`;
    const handle = await open(part, 'w', 0o644);
    const hashes = { md5: createHash('md5'), sha256: createHash('sha256') };
    let received = 0;
    try {
      while (received < size) {
        if (buffered.length === 0) await more(deadline);
        const take = buffered.subarray(0, Math.min(buffered.length, size - received));
        buffered = buffered.subarray(take.length);
        hashes.md5.update(take);
        hashes.sha256.update(take);
        await handle.write(take);
        received += take.length;
      }
    } finally {
      await handle.close();
    }
    if (hashes.sha256.digest('hex') !== sha256 || hashes.md5.digest('hex') !== md5) {
      await rm(part, { force: true });
      throw new AutotestError('ERR_CHECKSUM_MISMATCH', `autoserv channel: ${file} does not match the checksum it came with`);
    }
    await rename(part, dest);
    input.pause();
    return { file: dest, md5, bytes: size, seconds: (performance.now() - started) / 1000 };
  };

  return {
    /** Gets a package from autoserv into the cache; one at a time. */
    fetch(type: PackageType, name: string, cacheDir: string): Promise<ChannelAnswer> {
      const result = queue.then(() => request(type, name, cacheDir));
      queue = result.then(
        () => undefined,
        () => undefined,
      );
      return result;
    },
  };
}

export type ChannelClient = ReturnType<typeof createChannelClient>;
