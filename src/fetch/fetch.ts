import { createReadStream } from 'node:fs';
import { mkdir, open, readFile, rename, rm, stat, statfs, writeFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { flattenFetchLocations, type FetchLocation, type FetchSettings, type Location } from '../config/index.js';
import { AutotestError, errnoCode, isAutotestError } from '../errors.js';
import { indexProblems, type IndexEntry, type RepositoryIndex } from '../packages/index.js';
import { AllRepositoriesFailed, classifyNetworkError, FetchFailure } from './errors.js';
import { RepositoryHealth } from './health.js';
import { digesterFor, type Digester } from './hashing.js';
import { fetchRepositoryFor, type FetchRepository } from '../repositories/index.js';
import { orderForPackage } from './rendezvous.js';
import { openIndexTrust } from './kept-indexes.js';
import type { IndexTrust } from '../signing/index.js';

export interface FetchedPackage {
  file: string;
  entry: IndexEntry;
  /** The repository the bytes came from. */
  repository: string;
  /** Bytes moved over the network (less than the size when a download resumed). */
  bytes: number;
  seconds: number;
  /**
   * Why each repository listed before the one that served failed (empty when none did). One
   * that simply lacks the package is not named: builtin and custom repositories side by side
   * each lack the other's packages, and that is no cause for a warning.
   */
  passedOver: string[];
}

/** How far a download is: bytes of `file` in the package cache so far (a resumed part counts), of `size` when the index gives it. */
export interface DownloadProgress {
  file: string;
  repository: string;
  bytes: number;
  size: number | undefined;
}

/** Bytes received but not yet written before the download is paused. */
const MAX_QUEUED = 8 * 1024 * 1024;

/**
 * Writes `stream` into `handle` from `position` on, hashing each chunk once it is written. One
 * write is under way at a time and takes every chunk that arrived meanwhile (writev), so the
 * disk sees few large writes. Unlike an async iterator, which drops what is buffered when the
 * stream fails, every chunk that arrived before a cut is written before this returns or
 * reports: a resume then starts after it. Returns the bytes written and what stopped it, if anything.
 */
async function consume(stream: Readable, handle: FileHandle, position: number, hash: Digester, bound: { bytes: number; exact: boolean; tooLong: () => Error; onWritten: (written: number) => void }): Promise<{ written: number; error: Error | undefined }> {
  // Set from the data handler: an object, so that the check after `await` reads it afresh.
  const body = { complete: false };
  let queued: Buffer[] = [];
  let queuedBytes = 0;
  let written = 0;
  let writing: Promise<void> | undefined;
  let failed: Error | undefined;
  const flush = (): void => {
    if (writing || queued.length === 0 || failed) return;
    const buffers = queued;
    const bytes = queuedBytes;
    queued = [];
    queuedBytes = 0;
    writing = handle.writev(buffers, position + written).then(() => {
      written += bytes;
      writing = undefined;
      bound.onWritten(written);
      // Hashed once on disk, in order: the digest always covers exactly the bytes written.
      for (const buffer of buffers) hash.take(buffer);
      if (stream.isPaused()) stream.resume();
      flush();
    }, (error: unknown) => {
      writing = undefined;
      failed = error instanceof Error ? error : new Error(String(error));
      stream.destroy(failed);
    });
  };
  stream.on('data', (chunk: Buffer) => {
    if (failed) return;
    if (written + queuedBytes + chunk.length > bound.bytes) {
      // Cut at once, and nothing past the bound is written: the part never outgrows it.
      failed = bound.tooLong();
      stream.destroy(failed);
      return;
    }
    queued.push(chunk);
    queuedBytes += chunk.length;
    if (bound.exact && written + queuedBytes === bound.bytes) {
      // Every byte the index gives is here: the body's end is not waited for (a mirror that
      // then stalls would cost a timeout); verification says whether they are right.
      body.complete = true;
      stream.destroy();
    } else if (queuedBytes > MAX_QUEUED) stream.pause();
    flush();
  });
  let error: Error | undefined;
  try {
    await finished(stream);
  } catch (streamError) {
    if (!body.complete) error = streamError instanceof Error ? streamError : new Error(String(streamError));
  }
  while (writing) {
    await writing;
    flush();
  }
  return { written, error: failed ?? error };
}

/** sha256 where the index has it, md5 otherwise (Autotest's packages.checksum alone). */
function hashFor(entry: IndexEntry): { hash: Digester; wanted: string; algorithm: string } {
  const algorithm = entry.sha256 !== undefined ? 'sha256' : 'md5';
  return { hash: digesterFor(algorithm, entry.size), wanted: entry.sha256 ?? entry.md5, algorithm };
}

function backoffMs(attempt: number): number {
  return Math.min(5000, 200 * 2 ** attempt) * (0.5 + Math.random());
}

/**
 * Fetches packages from the repositories of fetch_location, in their order (a `|` group's
 * members in the order rendezvous hashing gives each package): per repository a
 * connect timeout, a deadline, retries with backoff on transient failures, resume of a cut
 * download, and verification against that repository's index before the file is renamed to
 * its name. A repository that fails slowly (connect timeout, stall) cools down; when all
 * fail, one error lists every repository tried and why.
 */
export class PackageFetcher {
  private readonly repositories = new Map<Location, FetchRepository>();
  private readonly indexes = new Map<FetchRepository, Promise<RepositoryIndex>>();

  private constructor(private readonly locations: FetchLocation[], private readonly settings: FetchSettings, private readonly health: RepositoryHealth, private readonly trust: IndexTrust | undefined, private readonly onWarning: (message: string) => void) {
    for (const location of flattenFetchLocations(locations)) this.repositories.set(location, fetchRepositoryFor(location, settings));
  }

  /** `onWarning` hears what was wrong in an index that was used all the same (a malformed line left out). */
  static async create(locations: FetchLocation[], settings: FetchSettings, stateDir?: string, onWarning: (message: string) => void = () => undefined): Promise<PackageFetcher> {
    if (locations.length === 0) {
      throw new AutotestError('ERR_CONFIG', 'no repository to fetch from: fetch_location is empty', {
        hint: 'list your repositories in fetch_location in [PACKAGES], nearest first',
      });
    }
    const indexTrust = await openIndexTrust(settings.trust, stateDir);
    return new PackageFetcher(locations, settings, await RepositoryHealth.open(settings.cooldownMs, stateDir), indexTrust, onWarning);
  }

  get names(): string[] {
    return [...this.repositories.values()].map((repository) => repository.name);
  }

  /** The repositories in the order to try for `file`. */
  private orderFor(file: string): FetchRepository[] {
    return orderForPackage(this.locations, file).flatMap((location) => this.repositories.get(location) ?? []);
  }

  /** The repository's index, read once per fetcher. */
  private index(repository: FetchRepository): Promise<RepositoryIndex> {
    let index = this.indexes.get(repository);
    if (!index) {
      // A failure is kept too: one fetcher never pays the same timeout twice.
      index = repository.readIndex(this.trust).then((read) => {
        for (const problem of indexProblems(read)) this.onWarning(problem);
        return read;
      });
      this.indexes.set(repository, index);
      index.catch(() => undefined);
    }
    return index;
  }

  /** Walks the repositories in `file`'s order; `attempt` returns a result, or throws why this one failed. */
  private async firstThatWorks<T>(what: string, file: string, attempt: (repository: FetchRepository, index: RepositoryIndex) => Promise<T | string>): Promise<T & { passedOver: string[] }> {
    const reasons: string[] = [];
    const failures: string[] = [];
    const hints = new Set<string>();
    for (const repository of this.orderFor(file)) {
      const wait = this.health.coolingDown(repository.name);
      if (wait > 0) {
        const reason = `${repository.name}: skipped for ${Math.ceil(wait / 1000).toString()} s more (fetch_cooldown) after: ${this.health.lastFailure(repository.name)}`;
        reasons.push(reason);
        failures.push(reason);
        continue;
      }
      try {
        const result = await attempt(repository, await this.index(repository));
        await this.health.succeeded(repository.name);
        if (typeof result === 'string') reasons.push(`${repository.name}: ${result}`);
        else return { ...result, passedOver: failures };
      } catch (error) {
        // The package cache refusing is this machine's problem: no other repository would do better.
        if (isAutotestError(error, 'ERR_LOCATION_REFUSED')) throw error;
        const failure = classifyNetworkError(error, repository.name);
        const reason = error instanceof AutotestError ? error.message : failure.message;
        // Only a slow failure is remembered: an instant one costs little to meet again, and
        // is often a setting (a CA, a started server) being fixed right now.
        if (failure.down) await this.health.failed(repository.name, reason);
        const hint = error instanceof AutotestError ? error.hint : failure.hint;
        if (hint !== undefined) hints.add(hint);
        const shown = hint === undefined ? reason : `${reason} (${hint})`;
        reasons.push(shown);
        failures.push(shown);
      }
    }
    throw new AllRepositoriesFailed(`cannot get ${what}: no repository could provide it:\n${reasons.map((r) => `  - ${r}`).join('\n')}`, {
      failures, hint: [...hints, 'check fetch_location and that the package was published ("autotest packager list")'].join('; '),
    });
  }

  /** The index entry of the first of `files` found, in the repository order of the first of them (the name Autotest gives the package). */
  async lookup(files: string[]): Promise<{ file: string; entry: IndexEntry; repository: string; passedOver: string[] }> {
    return this.firstThatWorks(files.join(' or '), files[0] ?? '', (repository, index) => {
      for (const file of files) {
        const entry = index.get(file);
        if (entry) return Promise.resolve({ file, entry, repository: repository.name });
      }
      return Promise.resolve(`${files.join(' or ')} is not in its index`);
    });
  }

  /** Fetches `file` to `dest` (a path in the package cache), verified. */
  async fetch(file: string, dest: string, onProgress?: (progress: DownloadProgress) => void): Promise<FetchedPackage> {
    return this.firstThatWorks(file, file, async (repository, index) => {
      const entry = index.get(file);
      if (!entry) return `${file} is not in its index`;
      return this.download(repository, file, entry, dest, onProgress);
    });
  }

  /**
   * How far a download may go: the size the index gives; without one, fetch_max_size and what
   * the package cache has free (a mirror sending an endless body never fills the disk).
   */
  private async sizeBound(entry: IndexEntry, cacheDir: string, offset: number, what: string): Promise<{ bytes: number; tooLong: () => FetchFailure }> {
    const cut = (why: string) => (): FetchFailure => new FetchFailure(`${what}: ${why}; cut and discarded`, { transient: false, down: false, tooLong: true });
    if (entry.size !== undefined) return { bytes: entry.size, tooLong: cut(`sends more than the ${entry.size.toString()} bytes its index gives`) };
    const fs = await statfs(cacheDir);
    const free = offset + fs.bavail * fs.bsize;
    if (free < this.settings.maxSizeBytes) return { bytes: free, tooLong: cut(`larger than the ${free.toString()} bytes free in the package cache ${cacheDir}`) };
    return { bytes: this.settings.maxSizeBytes, tooLong: cut(`larger than fetch_max_size (${this.settings.maxSizeBytes.toString()} bytes) and its index gives no size`) };
  }

  private async download(repository: FetchRepository, file: string, entry: IndexEntry, dest: string, onProgress?: (progress: DownloadProgress) => void): Promise<Omit<FetchedPackage, 'passedOver'>> {
    const started = performance.now();
    // fetch_timeout is one budget for this package from this repository: every try, every pause.
    const deadline = started + this.settings.timeoutMs;
    const what = `${repository.name}/${file}`;
    const overBudget = (tries: number): FetchFailure => new FetchFailure(
      `${what}: not complete within ${(this.settings.timeoutMs / 1000).toString()} s (fetch_timeout, ${tries.toString()} ${tries === 1 ? 'try' : 'tries'})`,
      { transient: false, down: true, timedOut: true },
    );
    const part = `${dest}.part`;
    const partInfo = `${dest}.part.json`;
    const identity = JSON.stringify({ md5: entry.md5, sha256: entry.sha256 ?? null, size: entry.size ?? null });
    await mkdir(path.dirname(dest), { recursive: true });
    let moved = 0;
    let restartedClean = false;
    for (let attempt = 0; ; attempt += 1) {
      // A partial download is resumed only when it was a download of these very bytes.
      let offset = 0;
      if ((await readFile(partInfo, 'utf8').catch(() => '')) === identity) offset = (await stat(part).catch(() => undefined))?.size ?? 0;
      else {
        await rm(part, { force: true });
        await writeFile(partInfo, identity);
      }
      if (entry.size !== undefined && offset > entry.size) offset = 0;
      let start = offset;
      let { hash, wanted, algorithm } = hashFor(entry);
      try {
        // All that is slow happens before the request: once the answer is there, its bytes
        // are consumed at once, so none sits in a buffer that a cut connection would drop.
        if (offset > 0) {
          for await (const chunk of createReadStream(part, { end: offset - 1 })) hash.update(chunk as Buffer);
        }
        await writeFile(part, '', { flag: 'a', mode: 0o644 });
        const bound = await this.sizeBound(entry, path.dirname(dest), offset, what);
        const remaining = deadline - performance.now();
        if (remaining <= 0) throw overBudget(attempt);
        const handle = await open(part, 'r+');
        let received = 0;
        let budgetTimer: NodeJS.Timeout | undefined;
        try {
          // A part that is already whole (a run killed just before its rename) needs no request.
          const opened = entry.size !== undefined && offset === entry.size && offset > 0
            ? { stream: Readable.from([]), start: offset }
            : await repository.open(file, offset, remaining);
          if (opened.start !== offset) {
            hash.dispose();
            ({ hash, wanted, algorithm } = hashFor(entry));
          }
          start = opened.start;
          budgetTimer = setTimeout(() => { opened.stream.destroy(overBudget(attempt + 1)); }, Math.max(0, deadline - performance.now()));
          const at = start;
          const result = await consume(opened.stream, handle, start, hash, {
            bytes: bound.bytes - start,
            exact: entry.size !== undefined,
            tooLong: bound.tooLong,
            onWritten: (written) => { onProgress?.({ file, repository: repository.name, bytes: at + written, size: entry.size }); },
          });
          received = result.written;
          moved += result.written;
          if (result.error !== undefined) throw result.error;
        } finally {
          clearTimeout(budgetTimer);
          // Whatever happened, the part file holds exactly the bytes received, in order.
          await handle.truncate(start + received).finally(() => handle.close());
        }
        const size = start + received;
        if (entry.size !== undefined && size < entry.size) {
          // A cut connection ends the body with an error (handled above); a body that ends
          // cleanly short is a file shorter than its index says, and asking again for the
          // rest could only be refused (416).
          await rm(part, { force: true });
          throw new FetchFailure(`${repository.name}/${file}: ${size.toString()} bytes, but its index gives ${entry.size.toString()}; discarded`, { transient: false, down: false });
        }
        const found = await hash.digest();
        if (found !== wanted || (entry.size !== undefined && size !== entry.size)) {
          await rm(part, { force: true });
          if (start > 0 && !restartedClean) {
            // The part kept from before may be what is wrong: one clean try before blaming the repository.
            restartedClean = true;
            attempt -= 1;
            continue;
          }
          throw new FetchFailure(`${repository.name}/${file}: ${algorithm} ${found} (${size.toString()} bytes) does not match its index (${wanted}); discarded`, { transient: false, down: false });
        }
        // No fsync: a cached tarball is verified again before every later use, so one that a
        // crash left damaged is fetched again, never used.
        await rename(part, dest);
        await rm(partInfo, { force: true });
        return { file, entry, repository: repository.name, bytes: moved, seconds: (performance.now() - started) / 1000 };
      } catch (error) {
        hash.dispose();
        const failure = classifyNetworkError(error, what);
        if (failure.tooLong) {
          // Bytes that are not the package: nothing of them is kept to resume from.
          await Promise.all([rm(part, { force: true }), rm(partInfo, { force: true })]);
          throw failure;
        }
        if (failure.rangeRefused && !restartedClean) {
          // The server will not resume this part: start again from the first byte.
          restartedClean = true;
          await rm(part, { force: true });
          attempt -= 1;
          continue;
        }
        const code = errnoCode(error);
        if (code === 'ENOSPC' || code === 'EROFS' || code === 'EACCES') {
          // A full cache is left as it was found: what this fetch wrote goes.
          await Promise.all([rm(part, { force: true }), rm(partInfo, { force: true })]);
          throw new AutotestError('ERR_LOCATION_REFUSED', `package cache ${path.dirname(dest)}: cannot write ${file} (${code})`, {
            hint: 'free some space or fix the permissions of the package cache', cause: error,
          });
        }
        if (!failure.transient || attempt >= this.settings.retries) {
          throw new FetchFailure(`${failure.message}${attempt > 0 ? ` (after ${(attempt + 1).toString()} tries)` : ''}`, {
            transient: false, down: failure.down, hint: failure.hint, cause: error,
          });
        }
        const pause = backoffMs(attempt);
        if (performance.now() + pause >= deadline) throw overBudget(attempt + 1);
        await sleep(pause);
      }
    }
  }
}
