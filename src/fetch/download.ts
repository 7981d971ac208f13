import { mkdir, statfs } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import type { FetchSettings } from '../config/index.js';
import { AutotestError, errnoCode } from '../errors.js';
import type { IndexEntry } from '../packages/index.js';
import type { FetchRepository, Opened } from '../repositories/types.js';
import type { FetchClock } from './clock.js';
import { consume } from './consume.js';
import { classifyNetworkError, FetchFailure } from '../repositories/read-failure.js';
import type { Digester, HashingThread } from './hashing.js';
import { PartFile } from './part-file.js';

/** How far a download is: bytes of `file` in the package cache so far (a resumed part counts), of `size` when the index gives it. */
export interface DownloadProgress {
  file: string;
  repository: string;
  bytes: number;
  size: number | undefined;
}

/** A package fetched from one repository, verified and under its name. */
export interface Downloaded {
  file: string;
  entry: IndexEntry;
  /** The repository the bytes came from. */
  repository: string;
  /** Bytes moved over the network (less than the size when a download resumed). */
  bytes: number;
  seconds: number;
}

/** What a download needs besides its package: the settings, time and chance, and the hashing thread. */
export interface DownloadContext {
  settings: FetchSettings;
  clock: FetchClock;
  hashing: () => HashingThread;
}

export interface DownloadRequest {
  repository: FetchRepository;
  file: string;
  entry: IndexEntry;
  /** The path in the package cache. */
  dest: string;
  onProgress?: ((progress: DownloadProgress) => void) | undefined;
}

/**
 * The pause before try `attempt + 1` (0-based): doubling from 200 ms up to 5 s, spread by
 * ±50 % so that many clients that failed together do not come back together.
 */
export function backoffMs(attempt: number, random: () => number): number {
  return Math.min(5000, 200 * 2 ** attempt) * (0.5 + random());
}

/** The digest the bytes must have: sha256 where the index has it, md5 otherwise (Autotest's packages.checksum alone). */
interface Verification {
  hash: Digester;
  wanted: string;
  algorithm: string;
}

/** What is left to do after a failed try. */
type AfterFailure = 'again' | 'retry';

/**
 * One package from one repository: retries with backoff on transient failures, resume of a
 * cut download from the bytes already written, and verification against the repository's
 * index before the file is renamed to its name. fetch_timeout is one budget for all of it:
 * every try, every pause.
 */
export class Download {
  private readonly part: PartFile;
  private readonly what: string;
  private readonly started: number;
  private readonly deadline: number;
  private moved = 0;
  /** A try from the first byte was made after the kept part or a range was refused: not twice. */
  private restartedClean = false;
  private verification: Verification | undefined;

  constructor(
    private readonly context: DownloadContext,
    private readonly request: DownloadRequest,
  ) {
    this.part = new PartFile(request.dest, request.entry);
    this.what = `${request.repository.name}/${request.file}`;
    this.started = context.clock.now();
    this.deadline = this.started + context.settings.timeoutMs;
  }

  async run(): Promise<Downloaded> {
    await mkdir(path.dirname(this.request.dest), { recursive: true });
    for (let attempt = 0; ; attempt += 1) {
      try {
        const result = await this.tryOnce(attempt);
        if (result !== 'again') return result;
      } catch (error) {
        if ((await this.afterFailure(error, attempt)) === 'retry') continue;
      }
      // A clean restart is not counted as a try.
      attempt -= 1;
    }
  }

  private overBudget(tries: number): FetchFailure {
    return new FetchFailure(
      `${this.what}: not complete within ${(this.context.settings.timeoutMs / 1000).toString()} s (fetch_timeout, ${tries.toString()} ${tries === 1 ? 'try' : 'tries'})`,
      { transient: false, down: true, timedOut: true },
    );
  }

  private newVerification(): Verification {
    const { entry } = this.request;
    const algorithm = entry.sha256 !== undefined ? 'sha256' : 'md5';
    return { hash: this.context.hashing().digesterFor(algorithm, entry.size), wanted: entry.sha256 ?? entry.md5, algorithm };
  }

  /** One request, from the resume point; 'again' when the kept part may be what was wrong. */
  private async tryOnce(attempt: number): Promise<Downloaded | 'again'> {
    const offset = await this.part.resumePoint();
    this.verification = this.newVerification();
    // All that is slow happens before the request: once the answer is there, its bytes
    // are consumed at once, so none sits in a buffer that a cut connection would drop.
    await this.part.hashKept(offset, this.verification.hash);
    const { start, size } = await this.receive(offset, attempt, await this.sizeBound(offset));
    if ((await this.verify(start, size)) === 'again') return 'again';
    await this.part.publish();
    const { file, entry, repository } = this.request;
    return { file, entry, repository: repository.name, bytes: this.moved, seconds: (this.context.clock.now() - this.started) / 1000 };
  }

  /** Writes the answer into the part file from where it starts; the part holds exactly the bytes received, whatever happens. */
  private async receive(offset: number, attempt: number, bound: { bytes: number; tooLong: () => FetchFailure }): Promise<{ start: number; size: number }> {
    const { repository, file, entry, onProgress } = this.request;
    const remaining = this.deadline - this.context.clock.now();
    if (remaining <= 0) throw this.overBudget(attempt);
    const handle = await this.part.openForWriting();
    const budget = new AbortController();
    let start = offset;
    let received = 0;
    try {
      // A part that is already whole (a run killed just before its rename) needs no request.
      const opened: Opened =
        entry.size !== undefined && offset === entry.size && offset > 0
          ? { stream: Readable.from([]), start: offset }
          : await repository.open(file, offset, remaining);
      start = opened.start;
      if (start !== offset) {
        this.verification?.hash.dispose();
        this.verification = this.newVerification();
      }
      this.cutAtDeadline(opened.stream, attempt, budget.signal);
      const at = start;
      const result = await consume(opened.stream, handle, start, this.current().hash, {
        bytes: bound.bytes - start,
        exact: entry.size !== undefined,
        tooLong: bound.tooLong,
        onWritten: (written) => {
          onProgress?.({ file, repository: repository.name, bytes: at + written, size: entry.size });
        },
      });
      received = result.written;
      this.moved += result.written;
      if (result.error !== undefined) throw result.error;
      return { start, size: start + received };
    } finally {
      budget.abort();
      await handle.truncate(start + received).finally(() => handle.close());
    }
  }

  private current(): Verification {
    if (!this.verification) throw new Error('a download received bytes before its verification was set up');
    return this.verification;
  }

  /** Cuts `stream` when fetch_timeout is spent, unless `signal` says the try ended first. */
  private cutAtDeadline(stream: Readable, attempt: number, signal: AbortSignal): void {
    const { clock } = this.context;
    clock.sleep(Math.max(0, this.deadline - clock.now()), signal).then(
      () => {
        stream.destroy(this.overBudget(attempt + 1));
      },
      () => undefined,
    );
  }

  /** Checks the bytes of the part against the index; 'again' when a kept part may be what is wrong. */
  private async verify(start: number, size: number): Promise<'again' | undefined> {
    const { repository, file, entry } = this.request;
    if (entry.size !== undefined && size < entry.size) {
      // A cut connection ends the body with an error (handled above); a body that ends
      // cleanly short is a file shorter than its index says, and asking again for the
      // rest could only be refused (416).
      await this.part.discard();
      throw new FetchFailure(`${repository.name}/${file}: ${size.toString()} bytes, but its index gives ${entry.size.toString()}; discarded`, {
        transient: false,
        down: false,
      });
    }
    const { hash, wanted, algorithm } = this.current();
    const found = await hash.digest();
    if (found === wanted && (entry.size === undefined || size === entry.size)) return undefined;
    await this.part.discard();
    if (start > 0 && !this.restartedClean) {
      // The part kept from before may be what is wrong: one clean try before blaming the repository.
      this.restartedClean = true;
      return 'again';
    }
    throw new FetchFailure(`${repository.name}/${file}: ${algorithm} ${found} (${size.toString()} bytes) does not match its index (${wanted}); discarded`, {
      transient: false,
      down: false,
    });
  }

  /** Decides after a failed try: start again from 0 ('again'), try again after a pause ('retry'), or give up (throws). */
  private async afterFailure(error: unknown, attempt: number): Promise<AfterFailure> {
    this.verification?.hash.dispose();
    const failure = classifyNetworkError(error, this.what);
    if (failure.tooLong) {
      // Bytes that are not the package: nothing of them is kept to resume from.
      await this.part.discardAll();
      throw failure;
    }
    if (failure.rangeRefused && !this.restartedClean) {
      // The server will not resume this part: start again from the first byte.
      this.restartedClean = true;
      await this.part.discard();
      return 'again';
    }
    const code = errnoCode(error);
    if (code === 'ENOSPC' || code === 'EROFS' || code === 'EACCES') {
      // A full cache is left as it was found: what this fetch wrote goes.
      await this.part.discardAll();
      throw new AutotestError('ERR_LOCATION_REFUSED', `package cache ${path.dirname(this.request.dest)}: cannot write ${this.request.file} (${code})`, {
        hint: 'free some space or fix the permissions of the package cache',
        cause: error,
      });
    }
    if (!failure.transient || attempt >= this.context.settings.retries) {
      throw new FetchFailure(`${failure.message}${attempt > 0 ? ` (after ${(attempt + 1).toString()} tries)` : ''}`, {
        transient: false,
        down: failure.down,
        hint: failure.hint,
        cause: error,
      });
    }
    const { clock } = this.context;
    const pause = backoffMs(attempt, clock.random);
    if (clock.now() + pause >= this.deadline) throw this.overBudget(attempt + 1);
    await clock.sleep(pause);
    return 'retry';
  }

  /**
   * How far a download may go: the size the index gives; without one, fetch_max_size and what
   * the package cache has free (a mirror sending an endless body never fills the disk).
   */
  private async sizeBound(offset: number): Promise<{ bytes: number; tooLong: () => FetchFailure }> {
    const { entry, dest } = this.request;
    const { maxSizeBytes } = this.context.settings;
    const cacheDir = path.dirname(dest);
    const cut = (why: string) => (): FetchFailure =>
      new FetchFailure(`${this.what}: ${why}; cut and discarded`, { transient: false, down: false, tooLong: true });
    if (entry.size !== undefined) return { bytes: entry.size, tooLong: cut(`sends more than the ${entry.size.toString()} bytes its index gives`) };
    const fs = await statfs(cacheDir);
    const free = offset + fs.bavail * fs.bsize;
    if (free < maxSizeBytes) return { bytes: free, tooLong: cut(`larger than the ${free.toString()} bytes free in the package cache ${cacheDir}`) };
    return { bytes: maxSizeBytes, tooLong: cut(`larger than fetch_max_size (${maxSizeBytes.toString()} bytes) and its index gives no size`) };
  }
}
