import { createHash, type Hash } from 'node:crypto';
import { open, rm, type FileHandle } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { FastifyBaseLogger } from 'fastify';
import type { FetchSettings } from '../config/index.js';
import { AutotestError, describeError, errnoCode, isAutotestError } from '../errors.js';
import type { FetchClock } from '../fetch/clock.js';
import { backoffMs } from '../fetch/download.js';
import { FetchFailure, type RepositoryHealth } from '../fetch/index.js';
import type { IndexEntry } from '../packages/index.js';
import type { FetchRepository } from '../repositories/index.js';
import { UpstreamFailures } from './cache-failures.js';
import { entryKey, type CacheStore } from './cache-store.js';
import type { CacheMetrics } from './metrics.js';

/** Write failures that mean the disk of cache_dir is full: the front streams through instead. */
const NO_SPACE = new Set(['ENOSPC', 'EDQUOT']);

/** Where the bytes of a download come from: the package, and the upstreams to ask for it in order. */
export interface DownloadSource {
  file: string;
  entry: IndexEntry;
  candidates: FetchRepository[];
}

/** One upstream download into the store, which every answer for the same package reads as it grows. */
export interface UpstreamDownload {
  key: string;
  temp: string;
  /** Known once an upstream answered: from the index, else the upstream's Content-Length. */
  size: number | undefined;
  written: number;
  /** 'spilled': the disk of cache_dir filled up; each answer goes on streaming from an upstream itself. */
  state: 'opening' | 'running' | 'done' | 'failed' | 'spilled';
  /** Why it failed, once 'failed': its code gives the answer's status. */
  failure: AutotestError | undefined;
  /** Once spilled: the digest of the `written` bytes on disk, for the answers to go on from. */
  hash: Hash | undefined;
  /** Where the rest comes from once spilled. */
  source: DownloadSource | undefined;
  /** The answers reading the download; each pins the entry once it is committed. */
  readers: Set<{ release: (() => void) | undefined }>;
  listeners: Set<() => void>;
  abort: (() => void) | undefined;
}

/** One upstream download under way: what it fetches, the digest of the bytes written, and whether they were found wrong. */
interface DownloadRun {
  download: UpstreamDownload;
  file: string;
  entry: IndexEntry;
  /** One digest over the bytes in the order written: a resume from another try or upstream continues it. */
  hash: Hash;
  /** The most bytes it may have: the index's size, else fetch_max_size. */
  bound: number;
  /** The copy was read whole and is not the index's: no other try can mend what clients were sent. */
  rejected: boolean;
  /** Hears of an upstream whose copy was not the index's. */
  passOver: (upstream: string) => void;
}

/** What the downloads of a front need: the store they fill, the fetch settings, and the policy's clock and cool-downs. */
export interface DownloadsContext {
  store: CacheStore;
  settings: FetchSettings;
  metrics: CacheMetrics;
  log: FastifyBaseLogger;
  health: Promise<RepositoryHealth>;
  clock: FetchClock;
}

/** Write failures that mean the disk of cache_dir is full (or the store has no room): the front streams through instead. */
export function isDiskFull(error: unknown): boolean {
  return isAutotestError(error, 'ERR_NO_SPACE') || NO_SPACE.has(errnoCode(error) ?? '');
}

function notify(download: UpstreamDownload): void {
  const listeners = [...download.listeners];
  download.listeners.clear();
  for (const listener of listeners) listener();
}

/** Resolves at the download's next change, or when the answer's client leaves. */
export function nextChange(download: UpstreamDownload, response: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      response.off('close', done);
      download.listeners.delete(done);
      resolve();
    };
    download.listeners.add(done);
    response.once('close', done);
  });
}

/**
 * The stream's bytes after its first `skip` (a server that ignored the range asked sends bytes
 * already had), without empty chunks.
 */
export async function* bytesFrom(stream: Readable, skip: number): AsyncGenerator<Buffer> {
  let left = skip;
  for await (const chunk of stream) {
    const data = chunk as Buffer;
    if (left >= data.length) {
      left -= data.length;
      continue;
    }
    const rest = left > 0 ? data.subarray(left) : data;
    left = 0;
    if (rest.length > 0) yield rest;
  }
}

/** A failure of one try as the fetch policy classifies it; a local one (the temp file, the store) is no upstream's and is not tried again. */
function asFetchFailure(error: unknown, what: string): FetchFailure {
  return error instanceof FetchFailure ? error : new FetchFailure(`${what}: ${describeError(error)}`, { transient: false, down: false, cause: error });
}

/**
 * The upstream downloads of a front, one per package however many answers wait for it: each
 * walks its candidate upstreams in order (skipping those in cool-down, retrying transient
 * failures after a backoff pause), writes a temp file that the waiting answers read as it
 * grows, and commits it to the store once its checksum is the index's.
 */
export class UpstreamDownloads {
  private readonly underWay = new Map<string, UpstreamDownload>();
  /** Ends the backoff pauses when the server shuts down. */
  private readonly closing = new AbortController();
  private diskFull = false;

  constructor(private readonly context: DownloadsContext) {}

  /** The download of `key` under way, for an answer to join. */
  get(key: string): UpstreamDownload | undefined {
    return this.underWay.get(key);
  }

  /**
   * Starts fetching `entry` from the upstreams `candidates` gives (registered at once, so that
   * requests meanwhile join it); `passOver` hears of an upstream whose copy was wrong.
   */
  start(file: string, entry: IndexEntry, candidates: () => Promise<FetchRepository[]>, passOver: (upstream: string) => void): UpstreamDownload {
    const key = entryKey(entry);
    const download: UpstreamDownload = {
      key,
      temp: this.context.store.tempPath(key),
      size: undefined,
      written: 0,
      state: 'opening',
      failure: undefined,
      hash: undefined,
      source: undefined,
      readers: new Set(),
      listeners: new Set(),
      abort: undefined,
    };
    this.underWay.set(key, download);
    const hash = createHash(entry.sha256 === undefined ? 'md5' : 'sha256');
    void this.run({ download, file, entry, hash, bound: entry.size ?? this.context.settings.maxSizeBytes, rejected: false, passOver }, candidates);
    return download;
  }

  /** Cuts every download under way (their waiting answers end incomplete). */
  close(): void {
    this.closing.abort();
    for (const download of this.underWay.values()) download.abort?.();
  }

  /** Fetches the download's file into a temp file from the first candidate that has it, verifying before it commits. */
  private async run(job: DownloadRun, listCandidates: () => Promise<FetchRepository[]>): Promise<void> {
    const { download, file, entry } = job;
    let handle: FileHandle | undefined;
    try {
      // Within the try: a download that cannot list its upstreams fails, rather than stay 'opening' for every request to join.
      const candidates = await listCandidates();
      download.source = { file, entry, candidates };
      if (!(await this.context.store.room(entry.size ?? 0))) throw new AutotestError('ERR_NO_SPACE', `cache_dir: no room for ${file}`);
      handle = await open(download.temp, 'wx', 0o644);
      const upstream = await this.walk(job, candidates, handle);
      await handle.sync();
      const closing = handle;
      handle = undefined;
      await closing.close();
      await this.commit(download);
      await (await this.context.health).succeeded(upstream.name);
    } catch (error) {
      this.end(job, error);
      await handle?.close().catch(() => undefined);
      await rm(download.temp, { force: true });
    } finally {
      this.forget(download);
      download.abort = undefined;
    }
  }

  /** Takes `download` off the list that requests join (unless a newer download of its key is on it). */
  private forget(download: UpstreamDownload): void {
    if (this.underWay.get(download.key) === download) this.underWay.delete(download.key);
  }

  /** The upstream walk: the first candidate whose copy, written to `temp`, is the index's; throws what every one said otherwise. */
  private async walk(job: DownloadRun, candidates: FetchRepository[], temp: FileHandle): Promise<FetchRepository> {
    const health = await this.context.health;
    const { settings, clock } = this.context;
    const failures = new UpstreamFailures();
    for (const repository of candidates) {
      if (health.coolingDown(repository.name) > 0) {
        failures.skipped(repository.name, health.lastFailure(repository.name));
        continue;
      }
      // fetch_timeout is an upstream's time in all, every try and pause included, as for a client.
      const deadline = clock.now() + settings.timeoutMs;
      for (let attempt = 0; attempt <= settings.retries; attempt += 1) {
        this.stopIfClosed(job.file);
        try {
          await this.copyFrom(repository, job, temp, Math.max(1, deadline - clock.now()));
          this.verifyCopy(job, repository.name);
          return repository;
        } catch (error) {
          const failure = await this.afterFailure(job, repository, error, failures);
          if (!failure.transient || failure.notFound || attempt >= settings.retries) break;
          const pause = backoffMs(attempt, clock.random);
          if (clock.now() + pause >= deadline) {
            failures.add(this.overBudget(`${repository.name}/${job.file}`, attempt + 1));
            break;
          }
          await clock.sleep(pause, this.closing.signal);
        }
      }
    }
    throw failures.error(`${job.file}: no upstream gave it`);
  }

  /** Throws once the front has closed: a download whose upstream answers after close() goes no further. */
  private stopIfClosed(file: string): void {
    if (this.closing.signal.aborted)
      throw new AutotestError('ERR_UNAVAILABLE', `${file}: the server is shutting down`, { hint: 'ask again once the server is back' });
  }

  /** An upstream that did not give the file within fetch_timeout, `tries` tries and their pauses. */
  private overBudget(what: string, tries: number): FetchFailure {
    return new FetchFailure(
      `${what}: not complete within ${(this.context.settings.timeoutMs / 1000).toString()} s (fetch_timeout, ${tries.toString()} ${tries === 1 ? 'try' : 'tries'})`,
      { transient: false, down: true, timedOut: true },
    );
  }

  /** Notes a failed try at `repository` (its cool-down, its copy passed over); throws when the download cannot go on at all. */
  private async afterFailure(job: DownloadRun, repository: FetchRepository, error: unknown, failures: UpstreamFailures): Promise<FetchFailure> {
    if (isDiskFull(error)) throw error;
    if (job.rejected) job.passOver(repository.name);
    const failure = asFetchFailure(error, `${repository.name}/${job.file}`);
    failures.add(error, failure.message);
    if (failure.down) await (await this.context.health).failed(repository.name, failure.message);
    // Bytes already sent to clients are wrong: this download is over, whatever the next upstream has.
    if (failure.tooLong) {
      this.context.metrics.rejected.inc({ reason: 'size' });
      job.rejected = true;
    }
    if (job.rejected) throw failure;
    return failure;
  }

  /** One try at one upstream within `timeoutMs`: its bytes from where the download stands, appended to the temp file and to the digest. */
  private async copyFrom(repository: FetchRepository, { download, file, entry, hash, bound }: DownloadRun, temp: FileHandle, timeoutMs: number): Promise<void> {
    const opened = await repository.open(file, download.written, timeoutMs);
    if (this.closing.signal.aborted) opened.stream.destroy();
    this.stopIfClosed(file);
    const skip = download.written - opened.start;
    if (download.state === 'opening') {
      const length = Number((opened.stream as Partial<IncomingMessage>).headers?.['content-length'] ?? Number.NaN);
      download.size = entry.size ?? (opened.start === 0 && Number.isInteger(length) ? length : undefined);
      download.state = 'running';
      notify(download);
    }
    download.abort = () => {
      opened.stream.destroy(new Error('the server is shutting down'));
    };
    for await (const data of bytesFrom(opened.stream, skip)) {
      if (download.written + data.length > bound) {
        throw new FetchFailure(`${repository.name}/${file}: longer than the ${bound.toString()} bytes the index gives`, {
          transient: false,
          down: false,
          tooLong: true,
        });
      }
      this.context.metrics.upstreamBytes.inc(data.length);
      // A nearly full disk takes part of a write before it refuses the next: `written`
      // counts what is on disk, so that a spilled download goes on from there.
      for (let offset = 0; offset < data.length;) {
        const { bytesWritten } = await temp.write(data, offset, data.length - offset, download.written);
        if (bytesWritten === 0) throw new AutotestError('ERR_NO_SPACE', `cache_dir: the disk took no byte of ${file}`);
        hash.update(data.subarray(offset, offset + bytesWritten));
        offset += bytesWritten;
        download.written += bytesWritten;
        notify(download);
      }
    }
  }

  /** Throws (and marks the copy rejected) when the bytes read whole are not the index's. */
  private verifyCopy(job: DownloadRun, repositoryName: string): void {
    const { download, file, entry, hash } = job;
    const wanted = entry.sha256 ?? entry.md5;
    const found = hash.digest('hex');
    const sizeWrong = download.size !== undefined && download.written !== download.size;
    if (found === wanted && !sizeWrong) return;
    this.context.metrics.rejected.inc({ reason: 'checksum' });
    job.rejected = true;
    throw new FetchFailure(
      `${repositoryName}/${file}: ${sizeWrong ? `${download.written.toString()} bytes, the index gives ${String(download.size)}` : `checksum ${found}, the index gives ${wanted}`}; not kept`,
      { transient: false, down: false },
    );
  }

  /** The verified temp file (closed) becomes the store's entry; readers waiting on it pin it. */
  private async commit(download: UpstreamDownload): Promise<void> {
    const { store } = this.context;
    await store.commit(download.temp, download.key, download.written);
    this.noteDisk(false);
    download.state = 'done';
    for (const reader of download.readers) reader.release = store.acquire(download.key)?.release;
    notify(download);
    await store.trim();
  }

  /** A download that cannot go on: spilled (the disk is full; each answer goes on from an upstream itself) or failed; nothing is kept. */
  private end({ download, file, hash, rejected }: DownloadRun, error: unknown): void {
    if (isDiskFull(error)) {
      // Each answer goes on from what it has (the bytes on disk stay readable to the handles
      // open on them after the temp is removed); nothing is kept.
      this.noteDisk(true);
      download.state = 'spilled';
      download.hash = hash;
    } else {
      download.state = 'failed';
      // A request from now on starts a download of its own rather than sharing this failure.
      this.forget(download);
      download.failure = isAutotestError(error) ? error : new AutotestError('ERR_FETCH', describeError(error), { cause: error });
      if (download.written > 0 && !rejected) this.context.metrics.rejected.inc({ reason: 'cut' });
      this.context.log.warn({ file, err: { message: download.failure.message } }, 'an upstream download failed; nothing was kept');
    }
    notify(download);
  }

  private noteDisk(full: boolean): void {
    if (full === this.diskFull) return;
    this.diskFull = full;
    this.context.metrics.diskFull.set(full ? 1 : 0);
    // One line at each change, not one per answer: a full disk may last.
    if (full) this.context.log.warn('the disk of cache_dir is full: packages are streamed through from upstreams, not kept');
    else this.context.log.info('the disk of cache_dir has room again: packages are kept again');
  }
}
