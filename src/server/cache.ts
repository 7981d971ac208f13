import { createHash, type Hash } from 'node:crypto';
import { open, rm, readFile, mkdir, readdir, type FileHandle } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { FastifyBaseLogger } from 'fastify';
import rangeParser from 'range-parser';
import { describeLocation, flattenFetchLocations, type FetchLocation, type FetchSettings, type Location } from '../config/index.js';
import { AutotestError, describeError, errnoCode, isAutotestError, type ErrorCode } from '../errors.js';
import { FetchFailure, orderForPackage, RepositoryHealth } from '../fetch/index.js';
import { fetchRepositoryFor, readIndexBody, type FetchRepository } from '../repositories/index.js';
import { writeFileAtomic } from '../fs/atomic.js';
import { CHECKSUM_FILE, MANIFEST_FILE, parseChecksumFile, readIndexFiles, type IndexEntry, type RepositoryIndex } from '../packages/index.js';
import type { CacheStore } from './cache-store.js';
import { isFresh } from './conditional.js';
import { answerError } from './error-answer.js';
import type { CacheMetrics } from './metrics.js';
import type { Resources } from '../resources.js';

/**
 * The index files a front passes through as the upstream has them (byte for byte, so that a
 * signature over them still holds); every other file it serves is a package of the index.
 */
export const INDEX_FILES: readonly string[] = [CHECKSUM_FILE, MANIFEST_FILE, 'packages.json.sig'];

/** Write failures that mean the disk of cache_dir is full: the front streams through instead. */
const NO_SPACE = new Set(['ENOSPC', 'EDQUOT']);
const READ_CHUNK = 256 * 1024;
export const STALE_HEADERS: Readonly<Record<string, string>> = { 'x-autotest-stale': '1', warning: '110 - "Response is Stale"' };

/** How a request to a cached repository was answered, or the verified entry the caller serves from disk (with Range and conditionals). */
export type CacheAnswer = { kind: 'answered'; bytes: number } | { kind: 'entry'; path: string; tag: string; stale: boolean; release: () => void };

export interface CachedRepository {
  name: string;
  answer(request: IncomingMessage, response: ServerResponse, file: string, contentType: string): Promise<CacheAnswer>;
  /** The index served now (the last good one during an outage). */
  readIndex(): Promise<RepositoryIndex>;
  /** What a listing shows: the indexed packages and the index files the upstream has. */
  files(): Promise<string[]>;
  /** What the frontend shows of this repository's cache. */
  stats(): CacheStats;
  /**
   * Forgets the index read so far: the next request reads it again. Called when this server
   * has just published to an upstream, so that its own change shows at once.
   */
  invalidate(): void;
}

/** Package answers of one served repository since start, and what of its index is cached. */
export interface CacheStats {
  hits: number;
  misses: number;
  coalesced: number;
  passedThrough: number;
  /** Cached entries of the packages its index names, and their bytes. */
  entries: number;
  bytes: number;
  /** The last good index is served: every upstream failed at the last try. */
  stale: boolean;
}

/** Bytes served and fetched upstream by the front since it started, at one moment. */
export interface TrafficSample {
  at: number;
  served: number;
  upstream: number;
}

export interface CacheFront {
  repository(name: string, upstreams: FetchLocation[], indexMaxAgeMs: number): CachedRepository;
  store: CacheStore;
  /** A sample a minute over the last hour (and the one before it, the baseline), then one taken now. */
  traffic(): Promise<TrafficSample[]>;
  /** Cuts every upstream download under way (their waiting answers end incomplete). */
  close(): void;
}

export interface CacheFrontOptions {
  store: CacheStore;
  settings: FetchSettings;
  metrics: CacheMetrics;
  log: FastifyBaseLogger;
  /** The server's connections to the upstreams. */
  resources: Resources;
}

type Counts = Pick<CacheStats, 'hits' | 'misses' | 'coalesced' | 'passedThrough'>;

const TRAFFIC_SAMPLE_MS = 60_000;
const TRAFFIC_WINDOW_MS = 3600_000;

interface Download {
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
  source: { file: string; entry: IndexEntry; candidates: FetchRepository[] } | undefined;
  /** The answers reading the download; each pins the entry once it is committed. */
  readers: Set<{ release: (() => void) | undefined }>;
  listeners: Set<() => void>;
  abort: (() => void) | undefined;
}

/** An index file as the upstream has it; `etag` is the upstream's, to revalidate it with. */
interface IndexFile {
  body: Buffer;
  tag: string;
  etag?: string | undefined;
}

/** The index to serve (undefined: none, not even a kept one), and what every upstream said when none answered. */
interface IndexRead {
  state: IndexState | undefined;
  failure: UpstreamFailures;
}

interface IndexState {
  files: Map<string, IndexFile>;
  index: RepositoryIndex;
  source: Location;
  readAt: number;
  /** Every upstream failed at the last try: this is the last good index. */
  stale: boolean;
}

/**
 * What an upstream's failure means to a client of the front: it timed out (504), it has no
 * such file (404), or it failed some other way (502).
 */
function upstreamCode(error: unknown): ErrorCode {
  const code =
    error instanceof FetchFailure
      ? error.timedOut
        ? 'ERR_TIMEOUT'
        : error.notFound
          ? 'ERR_NOT_FOUND'
          : 'ERR_FETCH'
      : isAutotestError(error)
        ? error.code
        : 'ERR_FETCH';
  return code === 'ERR_TIMEOUT' || code === 'ERR_NOT_FOUND' ? code : 'ERR_FETCH';
}

/** The failures of every upstream tried for one answer; the answer takes the code they share, else ERR_FETCH. */
export class UpstreamFailures {
  readonly messages: string[] = [];
  private readonly codes = new Set<ErrorCode>();

  /** Notes a failed try, said as `message`. */
  add(error: unknown, message = describeError(error)): void {
    this.messages.push(message);
    this.codes.add(upstreamCode(error));
  }

  /** An upstream left out while it cools down after slow failures: down, as far as this answer knows. */
  skipped(label: string, lastFailure: string): void {
    this.messages.push(`${label}: skipped (${lastFailure})`);
    this.codes.add('ERR_FETCH');
  }

  get text(): string {
    return this.messages.join('; ') || 'none to try';
  }

  /** "`what` (every failure)", with the code every failure shares: all timed out is ERR_TIMEOUT, all lacked it ERR_NOT_FOUND. */
  error(what: string): AutotestError {
    const [only] = this.codes;
    const code = this.codes.size === 1 && only !== undefined ? only : 'ERR_FETCH';
    return new AutotestError(code, `${what} (${this.text})`, {
      hint: code === 'ERR_TIMEOUT' ? 'the upstreams are slow or unreachable; raise fetch_timeout or check them' : 'check the upstreams named in fetch_location',
    });
  }
}

/** Write failures that mean the disk of cache_dir is full (or the store has no room): the front streams through instead. */
function isDiskFull(error: unknown): boolean {
  return isAutotestError(error, 'ERR_NO_SPACE') || NO_SPACE.has(errnoCode(error) ?? '');
}

/** The key an entry is verified against and stored under. */
function keyOf(entry: IndexEntry): string {
  return entry.sha256 === undefined ? `md5-${entry.md5}` : `sha256-${entry.sha256}`;
}

function notify(download: Download): void {
  const listeners = [...download.listeners];
  download.listeners.clear();
  for (const listener of listeners) listener();
}

/** Resolves at the download's next change, or when the answer's client leaves. */
function nextChange(download: Download, response: ServerResponse): Promise<void> {
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
async function* bytesFrom(stream: Readable, skip: number): AsyncGenerator<Buffer> {
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

function bodyTag(body: Buffer): string {
  return `"i-${createHash('sha256').update(body).digest('hex').slice(0, 32)}"`;
}

function indexOf(files: Map<string, { body: Buffer }>, where: string): RepositoryIndex {
  const checksums = files.get(CHECKSUM_FILE);
  if (!checksums) throw new FetchFailure(`${where}: has no ${CHECKSUM_FILE}`, { transient: false, down: false });
  return readIndexFiles(
    parseChecksumFile(checksums.body.toString('utf8'), `${where}/${CHECKSUM_FILE}`),
    files.get(MANIFEST_FILE)?.body.toString('utf8'),
    (file) => `${where}/${file}`,
  ).index;
}

function isGone(response: ServerResponse): boolean {
  return response.destroyed;
}

/** Resolves once `response` may take more bytes (or is gone). */
function drained(response: ServerResponse): Promise<void> {
  return new Promise<void>((resolve) => {
    const go = (): void => {
      response.off('drain', go);
      response.off('close', go);
      resolve();
    };
    response.on('drain', go);
    response.on('close', go);
  });
}

/** One upstream download under way: what it fetches, the digest of the bytes written, and whether they were found wrong. */
interface DownloadRun {
  download: Download;
  file: string;
  entry: IndexEntry;
  /** One digest over the bytes in the order written: a resume from another try or upstream continues it. */
  hash: Hash;
  /** The most bytes it may have: the index's size, else fetch_max_size. */
  bound: number;
  /** The copy was read whole and is not the index's: no other try can mend what clients were sent. */
  verdict: { rejected: boolean };
}

/** Where an answer of a spilled download goes on from: the bytes it sent, their digest, and the one byte it holds back. */
interface Continuation {
  position: number;
  hash: Hash;
  held: Buffer | undefined;
}

/**
 * Writes what the answer may have of the download, holding back its last byte until the bytes
 * are verified; for a spilled download, every byte on disk but the last, which it returns held.
 */
async function streamDownload(
  download: Download,
  handle: FileHandle,
  response: ServerResponse,
  span: Span,
): Promise<{ sent: number; spilled: Continuation | undefined }> {
  let position = span.start;
  const result = (spilled?: Continuation): { sent: number; spilled: Continuation | undefined } => ({ sent: position - span.start, spilled });
  for (;;) {
    if (response.destroyed) return result();
    // A range that ends before the last byte needs no verdict: the client verifies what it assembles.
    if (position > span.end) {
      response.end();
      return result();
    }
    const spilled = download.state === 'spilled';
    if (download.state === 'failed' || (spilled && span.end !== Infinity && position >= download.written - 1)) {
      // Never the last byte of a copy that failed: the client sees a cut body, not a wrong one.
      // A range the disk could not hold is cut too: the client asks again, from what it has.
      response.destroy();
      return result();
    }
    const done = download.state === 'done';
    if (spilled && download.hash && position >= download.written - 1) {
      const held = download.written > position ? Buffer.alloc(1) : undefined;
      if (held) await handle.read(held, 0, 1, position);
      return result({ position: download.written, hash: download.hash.copy(), held });
    }
    const available = done
      ? download.written
      : spilled
        ? download.written - 1
        : Math.min(download.written, download.size === undefined ? Infinity : download.size - 1);
    const limit = Math.min(available, span.end + 1);
    if (position < limit) {
      const buffer = Buffer.allocUnsafe(Math.min(READ_CHUNK, limit - position));
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, position);
      if (bytesRead === 0) {
        response.destroy();
        return result();
      }
      position += bytesRead;
      if (!response.write(buffer.subarray(0, bytesRead))) await drained(response);
      continue;
    }
    if (done) {
      response.end();
      return result();
    }
    await nextChange(download, response);
  }
}

/** Bytes start..end (inclusive; Infinity: to the end, whatever the size) of a download an answer sends. */
interface Span {
  start: number;
  end: number;
}

/**
 * The one range a request asks of a download of `size` bytes tagged `tag`, honouring
 * If-Range; undefined for the whole file (no Range, another unit, several ranges, a stale
 * If-Range), 'unsatisfiable' for a 416.
 */
function requestedSpan(request: IncomingMessage, size: number, tag: string): Span | 'unsatisfiable' | undefined {
  const header = request.headers.range;
  const ifRange = request.headers['if-range'];
  if (header === undefined || !/^\s*bytes\s*=/i.test(header) || (ifRange !== undefined && ifRange !== tag)) return undefined;
  const ranges = rangeParser(size, header, { combine: true });
  if (ranges === -1) return 'unsatisfiable';
  if (ranges === -2 || ranges.length !== 1 || !ranges[0]) return undefined;
  return { start: ranges[0].start, end: ranges[0].end };
}

/** The answer for a download that has ended (failed, spilled to a pass-through, or done), or undefined while it runs. */
async function answerEnded(
  front: {
    metrics: CacheMetrics;
    store: CacheStore;
    passThrough: (response: ServerResponse, source: NonNullable<Download['source']>, headers: Record<string, string>, from: Continuation) => Promise<number>;
  },
  download: Download,
  response: ServerResponse,
  headers: Record<string, string>,
  counted: { name: string; counts: Counts },
): Promise<CacheAnswer | undefined> {
  if (download.state === 'failed')
    return {
      kind: 'answered',
      bytes: answerError(response, download.failure?.code ?? 'ERR_FETCH', download.failure?.message ?? 'the upstream download failed'),
    };
  if (download.state === 'spilled' && download.source) {
    front.metrics.passedThrough.inc({ repository: counted.name });
    counted.counts.passedThrough += 1;
    response.setHeader('x-autotest-cache', 'pass');
    const hash = createHash(download.source.entry.sha256 === undefined ? 'md5' : 'sha256');
    return { kind: 'answered', bytes: await front.passThrough(response, download.source, headers, { position: 0, hash, held: undefined }) };
  }
  if (download.state === 'done') {
    const entry = front.store.acquire(download.key);
    if (!entry)
      return { kind: 'answered', bytes: answerError(response, 'ERR_UNAVAILABLE', 'the entry was evicted just now; try again', { 'retry-after': '1' }) };
    return { kind: 'entry', path: entry.path, tag: `"${download.key}"`, stale: false, release: entry.release };
  }
  return undefined;
}

/** An index file as the upstream has it (`kept`; undefined: the upstream has none), with its ETag and conditionals. */
function answerIndexFile(
  request: IncomingMessage,
  response: ServerResponse,
  kept: IndexFile | undefined,
  file: string,
  headers: Record<string, string>,
): number {
  if (!kept) return answerError(response, 'ERR_NOT_FOUND', `${file}: not in this repository`);
  response.setHeader('etag', kept.tag);
  if (isFresh(request.headers, { etag: kept.tag })) {
    response.writeHead(304, headers);
    response.end();
    return 0;
  }
  response.writeHead(200, { ...headers, 'content-length': kept.body.length.toString() });
  response.end(request.method === 'HEAD' ? undefined : kept.body);
  return request.method === 'HEAD' ? 0 : kept.body.length;
}

export function createCacheFront(options: CacheFrontOptions): CacheFront {
  const { store, settings, metrics, log } = options;
  const downloads = new Map<string, Download>();
  const healthReady = RepositoryHealth.open(settings.cooldownMs, undefined);
  let diskFull = false;
  const counterValue = async (counter: CacheMetrics['servedBytes']): Promise<number> =>
    (await counter.get()).values.reduce((sum, value) => sum + value.value, 0);
  const sampleTraffic = async (): Promise<TrafficSample> => ({
    at: Date.now(),
    served: await counterValue(metrics.servedBytes),
    upstream: await counterValue(metrics.upstreamBytes),
  });
  // The counters start at 0 with the server (one registry per server).
  const samples: TrafficSample[] = [{ at: Date.now(), served: 0, upstream: 0 }];
  const sampler = setInterval(() => {
    void sampleTraffic().then((sample) => {
      samples.push(sample);
      // One sample older than the window stays: the baseline of the chart.
      while (samples.length > 2 && (samples[1]?.at ?? 0) < sample.at - TRAFFIC_WINDOW_MS) samples.shift();
    });
  }, TRAFFIC_SAMPLE_MS);
  sampler.unref();
  const noteDisk = (full: boolean): void => {
    if (full === diskFull) return;
    diskFull = full;
    metrics.diskFull.set(full ? 1 : 0);
    // One line at each change, not one per answer: a full disk may last.
    if (full) log.warn('the disk of cache_dir is full: packages are streamed through from upstreams, not kept');
    else log.info('the disk of cache_dir has room again: packages are kept again');
  };

  /**
   * Streams `file` from the first candidate that gives it, from `from.position` on, to one
   * answer, keeping nothing: what an answer does when cache_dir's disk is full. The digest runs
   * over every byte sent, and the last one is held back until it matches the index.
   */
  const passThrough = async (
    response: ServerResponse,
    source: NonNullable<Download['source']>,
    headers: Record<string, string>,
    from: Continuation,
  ): Promise<number> => {
    const { file, entry, candidates } = source;
    const bound = entry.size ?? settings.maxSizeBytes;
    const { hash } = from;
    let { position, held } = from;
    let sent = 0;
    let tooLong = false;
    const failures = new UpstreamFailures();
    for (const repository of candidates) {
      if (response.destroyed || tooLong || (entry.size !== undefined && position >= entry.size)) break;
      let stream: Readable | undefined;
      const cut = (): void => {
        stream?.destroy();
      };
      response.once('close', cut);
      try {
        const opened = await repository.open(file, position, settings.timeoutMs);
        stream = opened.stream;
        // The client may have left while the upstream was opened (the narrowing above cannot know).
        if (isGone(response)) break;
        if (!response.headersSent) response.writeHead(200, { ...headers, ...(entry.size === undefined ? {} : { 'content-length': entry.size.toString() }) });
        for await (const data of bytesFrom(opened.stream, position - opened.start)) {
          if (position + data.length > bound) {
            tooLong = true;
            break;
          }
          hash.update(data);
          position += data.length;
          metrics.upstreamBytes.inc(data.length);
          const out = held ? Buffer.concat([held, data.subarray(0, data.length - 1)]) : data.subarray(0, data.length - 1);
          held = data.subarray(data.length - 1);
          sent += out.length;
          if (!response.write(out)) await drained(response);
          if (isGone(response)) break;
        }
        if (!tooLong) break;
      } catch (error) {
        failures.add(error);
      } finally {
        response.off('close', cut);
        stream?.destroy();
      }
    }
    if (!response.headersSent) {
      const failure = failures.error(`${file}: no upstream gave it`);
      return answerError(response, failure.code, failure.message);
    }
    const whole = !tooLong && (entry.size === undefined || position === entry.size) && hash.digest('hex') === (entry.sha256 ?? entry.md5);
    if (!whole || response.destroyed) {
      if (!response.destroyed) metrics.rejected.inc({ reason: tooLong ? 'size' : 'checksum' });
      // Never the last byte of a wrong or cut copy.
      response.destroy();
    } else {
      response.end(held);
      sent += held?.length ?? 0;
    }
    metrics.servedBytes.inc(sent);
    return sent;
  };

  /** One try at one upstream: its bytes from where the download stands, appended to the temp file and to `hash`. */
  const copyFrom = async (repository: FetchRepository, { download, file, entry, hash, bound }: DownloadRun, temp: FileHandle): Promise<void> => {
    const opened = await repository.open(file, download.written, settings.timeoutMs);
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
      metrics.upstreamBytes.inc(data.length);
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
  };

  /** Throws (and marks the copy rejected) when the bytes read whole are not the index's. */
  const verifyCopy = ({ download, file, entry, hash, verdict }: DownloadRun, repositoryName: string): void => {
    const wanted = entry.sha256 ?? entry.md5;
    const found = hash.digest('hex');
    const sizeWrong = download.size !== undefined && download.written !== download.size;
    if (found === wanted && !sizeWrong) return;
    metrics.rejected.inc({ reason: 'checksum' });
    verdict.rejected = true;
    throw new FetchFailure(
      `${repositoryName}/${file}: ${sizeWrong ? `${download.written.toString()} bytes, the index gives ${String(download.size)}` : `checksum ${found}, the index gives ${wanted}`}; not kept`,
      { transient: false, down: false },
    );
  };

  /** The verified temp file (closed) becomes the store's entry; readers waiting on it pin it. */
  const commitDownload = async (download: Download): Promise<void> => {
    await store.commit(download.temp, download.key, download.written);
    noteDisk(false);
    download.state = 'done';
    for (const reader of download.readers) reader.release = store.acquire(download.key)?.release;
    notify(download);
    await store.trim();
  };

  /** A download that cannot go on: spilled (the disk is full; each answer goes on from an upstream itself) or failed; nothing is kept. */
  const endDownload = ({ download, file, hash, verdict }: DownloadRun, error: unknown): void => {
    if (isDiskFull(error)) {
      // Each answer goes on from what it has (the bytes on disk stay readable to the handles
      // open on them after the temp is removed); nothing is kept.
      noteDisk(true);
      download.state = 'spilled';
      download.hash = hash;
    } else {
      download.state = 'failed';
      download.failure = isAutotestError(error) ? error : new AutotestError('ERR_FETCH', describeError(error), { cause: error });
      if (download.written > 0 && !verdict.rejected) metrics.rejected.inc({ reason: 'cut' });
      log.warn({ file, err: { message: download.failure.message } }, 'an upstream download failed; nothing was kept');
    }
    notify(download);
  };

  /** Fetches the download's file into a temp file from the first candidate that has it, verifying before it commits. */
  const run = async (job: DownloadRun, candidates: FetchRepository[], passOver: (name: string) => void): Promise<void> => {
    const health = await healthReady;
    const { download, file, entry, verdict } = job;
    const failures = new UpstreamFailures();
    let handle: FileHandle | undefined;
    try {
      if (!(await store.room(entry.size ?? 0))) throw new AutotestError('ERR_NO_SPACE', `cache_dir: no room for ${file}`);
      const temp = await open(download.temp, 'wx', 0o644);
      handle = temp;
      for (const repository of candidates) {
        if (health.coolingDown(repository.name) > 0) {
          failures.skipped(repository.name, health.lastFailure(repository.name));
          continue;
        }
        for (let attempt = 0; attempt <= settings.retries; attempt += 1) {
          try {
            await copyFrom(repository, job, temp);
            verifyCopy(job, repository.name);
            await temp.sync();
            await temp.close();
            handle = undefined;
            await commitDownload(download);
            await health.succeeded(repository.name);
            return;
          } catch (error) {
            if (isDiskFull(error)) throw error;
            if (verdict.rejected) passOver(repository.name);
            const failure =
              error instanceof FetchFailure
                ? error
                : new FetchFailure(`${repository.name}/${file}: ${describeError(error)}`, { transient: false, down: false, cause: error });
            failures.add(error, failure.message);
            if (failure.down) await health.failed(repository.name, failure.message);
            // Bytes already sent to clients are wrong: this download is over, whatever the next upstream has.
            if (failure.tooLong) {
              metrics.rejected.inc({ reason: 'size' });
              verdict.rejected = true;
            }
            if (verdict.rejected) throw failure;
            if (!failure.transient || failure.notFound) break;
          }
        }
      }
      throw failures.error(`${file}: no upstream gave it`);
    } catch (error) {
      endDownload(job, error);
      await handle?.close().catch(() => undefined);
      await rm(download.temp, { force: true });
    } finally {
      downloads.delete(download.key);
      download.abort = undefined;
    }
  };

  /** Answers one request from a download under way: headers once an upstream answered, then the bytes as they arrive. */
  const follow = async (
    download: Download,
    request: IncomingMessage,
    response: ServerResponse,
    headers: Record<string, string>,
    counted: { name: string; counts: Counts },
  ): Promise<CacheAnswer> => {
    while (download.state === 'opening') {
      if (response.destroyed) return { kind: 'answered', bytes: 0 };
      await nextChange(download, response);
    }
    for (;;) {
      const ended = await answerEnded({ metrics, store, passThrough }, download, response, headers, counted);
      if (ended) return ended;
      let handle: FileHandle;
      try {
        handle = await open(download.temp, 'r');
      } catch (error) {
        // Renamed into the store or removed meanwhile: the state says which.
        if (errnoCode(error) === 'ENOENT') continue;
        throw error;
      }
      const reader: { release: (() => void) | undefined } = { release: undefined };
      download.readers.add(reader);
      try {
        const { size } = download;
        // A range is answered from the bytes as they arrive, as the whole file is.
        const span = size === undefined || request.method === 'HEAD' ? undefined : requestedSpan(request, size, headers.etag ?? '');
        if (span === 'unsatisfiable')
          return { kind: 'answered', bytes: answerError(response, 'ERR_RANGE', 'range not satisfiable', { 'content-range': `bytes */${String(size)}` }) };
        if (span) {
          response.writeHead(206, {
            ...headers,
            'content-range': `bytes ${span.start.toString()}-${span.end.toString()}/${String(size)}`,
            'content-length': (span.end - span.start + 1).toString(),
          });
        } else response.writeHead(200, { ...headers, ...(size === undefined ? {} : { 'content-length': size.toString() }) });
        if (request.method === 'HEAD') {
          response.end();
          return { kind: 'answered', bytes: 0 };
        }
        const { sent, spilled } = await streamDownload(download, handle, response, span ?? { start: 0, end: Infinity });
        metrics.servedBytes.inc(sent);
        if (!spilled || !download.source) return { kind: 'answered', bytes: sent };
        metrics.passedThrough.inc({ repository: counted.name });
        counted.counts.passedThrough += 1;
        return { kind: 'answered', bytes: sent + (await passThrough(response, download.source, headers, spilled)) };
      } finally {
        download.readers.delete(reader);
        reader.release?.();
        await handle.close();
      }
    }
  };

  const repository = (name: string, upstreams: FetchLocation[], indexMaxAgeMs: number): CachedRepository => {
    let state: IndexState | undefined;
    let lastTry = 0;
    const counts: Counts = { hits: 0, misses: 0, coalesced: 0, passedThrough: 0 };
    /** Grows at each invalidate(): a read begun before it may hold the index as it was before the publish. */
    let generation = 0;
    let refreshing: { generation: number; result: Promise<IndexRead> } | undefined;
    /** The generation of the read that set `state`: an older read ending later never replaces it. */
    let stateGeneration = -1;
    let loaded = false;
    const others = new Map<string, Promise<RepositoryIndex | undefined>>();
    /** Upstreams whose copy of a key failed verification since the index was read: asked last for it. */
    const passedOver = new Map<string, Set<string>>();
    const repositoryOf = (location: Location): FetchRepository => fetchRepositoryFor(location, settings, options.resources);

    /**
     * The index files of `location`; those of `previous` (read from it before) revalidated with
     * their ETags where the scheme has them, so an unchanged index costs a 304 per file.
     */
    const readUpstreamIndex = async (
      location: Location,
      previous: Map<string, IndexFile> | undefined,
    ): Promise<{ files: Map<string, IndexFile>; unchanged: boolean }> => {
      const upstream = repositoryOf(location);
      const files = new Map<string, IndexFile>();
      let unchanged = previous !== undefined;
      await Promise.all(
        INDEX_FILES.map(async (file) => {
          const before = previous?.get(file);
          try {
            if (upstream.readIfChanged) {
              const answer = await upstream.readIfChanged(file, before?.etag, settings.timeoutMs);
              if (before?.etag !== undefined) metrics.indexRevalidations.inc({ result: answer.unchanged ? 'unchanged' : 'changed' });
              if (answer.unchanged && before) {
                files.set(file, before);
                return;
              }
              unchanged = false;
              if (answer.unchanged)
                throw new FetchFailure(`${upstream.name}/${file}: answered 304 to a request that had no ETag`, { transient: false, down: false });
              const body = await readIndexBody(answer.stream, `${upstream.name}/${file}`);
              files.set(file, { body, tag: bodyTag(body), etag: answer.etag });
              return;
            }
            const opened = await upstream.open(file, 0, settings.timeoutMs);
            const body = await readIndexBody(opened.stream, `${upstream.name}/${file}`);
            if (!before?.body.equals(body)) unchanged = false;
            files.set(file, { body, tag: bodyTag(body) });
          } catch (error) {
            if (error instanceof FetchFailure && error.notFound && file !== CHECKSUM_FILE) {
              if (before) unchanged = false;
              return;
            }
            throw error;
          }
        }),
      );
      return { files, unchanged };
    };

    /** The last good index written by an earlier run, for an outage that starts before any upstream answered. */
    const loadKept = async (): Promise<IndexState | undefined> => {
      const dir = store.indexDir(name);
      try {
        const files = new Map<string, IndexFile>();
        for (const file of await readdir(dir)) {
          if (!INDEX_FILES.includes(file)) continue;
          const body = await readFile(path.join(dir, file));
          files.set(file, { body, tag: bodyTag(body) });
        }
        const [source] = flattenFetchLocations(upstreams);
        if (!source) return undefined;
        return { files, index: indexOf(files, dir), source, readAt: 0, stale: true };
      } catch {
        return undefined;
      }
    };

    const keep = async (files: Map<string, { body: Buffer }>): Promise<void> => {
      const dir = store.indexDir(name);
      await mkdir(dir, { recursive: true });
      // packages.checksum last: a kept index is read from it, so it never names what the others lack.
      for (const file of [...INDEX_FILES].reverse()) {
        const kept = files.get(file);
        if (kept) await writeFileAtomic(path.join(dir, file), kept.body);
        else await rm(path.join(dir, file), { force: true });
      }
    };

    const refresh = async (): Promise<IndexRead> => {
      const health = await healthReady;
      const mine = generation;
      const failures = new UpstreamFailures();
      let empty: Location | undefined;
      for (const location of flattenFetchLocations(upstreams)) {
        const label = describeLocation(location);
        if (health.coolingDown(label) > 0) {
          failures.skipped(label, health.lastFailure(label));
          continue;
        }
        try {
          const same = state !== undefined && describeLocation(state.source) === label;
          const { files, unchanged } = await readUpstreamIndex(location, same ? state?.files : undefined);
          const kept = unchanged ? state?.index : undefined;
          const index = kept ?? indexOf(files, label);
          if (mine < stateGeneration && state) return { state, failure: failures };
          stateGeneration = mine;
          if (state?.stale) log.info({ repository: name, upstream: label }, 'an upstream answered again; the index is fresh');
          state = { files, index, source: location, readAt: Date.now(), stale: false };
          if (!kept) {
            others.clear();
            passedOver.clear();
            await keep(files).catch((error: unknown) => {
              log.warn({ err: { message: describeError(error) } }, 'cannot keep the upstream index in cache_dir');
            });
          }
          await health.succeeded(label);
          return { state, failure: failures };
        } catch (error) {
          const message = describeError(error);
          failures.add(error);
          if (error instanceof FetchFailure && error.notFound) empty ??= location;
          if (error instanceof FetchFailure && error.down) await health.failed(label, message);
        }
      }
      if (empty) {
        // An upstream answered that it has no index (a new S3 prefix, a custom location nobody
        // published to yet): an empty repository, not an outage. Only when no upstream has one.
        if (mine >= stateGeneration) {
          stateGeneration = mine;
          state = { files: new Map(), index: new Map(), source: empty, readAt: Date.now(), stale: false };
          others.clear();
          passedOver.clear();
        }
        return { state, failure: failures };
      }
      if (!state && !loaded) {
        loaded = true;
        state = await loadKept();
      }
      if (state && !state.stale)
        log.warn({ repository: name, failures: failures.messages }, 'every upstream failed; serving the last good index and cached packages');
      if (state) state.stale = true;
      return { state, failure: failures };
    };

    const current = async (): Promise<IndexRead> => {
      const now = Date.now();
      if (state && now - (state.stale ? lastTry : state.readAt) < indexMaxAgeMs) return { state, failure: new UpstreamFailures() };
      if (refreshing?.generation !== generation) {
        const started = { generation, result: refresh() };
        refreshing = started;
        void started.result.finally(() => {
          lastTry = Date.now();
          if (refreshing === started) refreshing = undefined;
          // Read before an invalidate(): good enough to answer with, to be read again next time.
          if (started.generation !== generation && state) state.readAt = 0;
        });
      }
      return refreshing.result;
    };

    /** Where the bytes of `entry` may come from: the upstream whose index is served, others only when their index agrees. */
    const candidatesFor = async (source: Location, file: string, entry: IndexEntry): Promise<FetchRepository[]> => {
      const skipped = passedOver.get(keyOf(entry));
      const sourceName = describeLocation(source);
      const result: FetchRepository[] = [];
      // One that sent a bad copy goes last: with no other, it is asked again (a publish may be under way).
      const ordered = orderForPackage(upstreams, file);
      const byTrust = [
        ...ordered.filter((location) => !skipped?.has(describeLocation(location))),
        ...ordered.filter((location) => skipped?.has(describeLocation(location))),
      ];
      for (const location of byTrust) {
        const label = describeLocation(location);
        if (label === sourceName) {
          result.push(repositoryOf(location));
          continue;
        }
        let theirs = others.get(label);
        if (!theirs) {
          theirs = repositoryOf(location)
            .readIndex()
            .catch(() => undefined);
          others.set(label, theirs);
        }
        const other = (await theirs)?.get(file);
        if (other && other.md5 === entry.md5 && (entry.sha256 === undefined || other.sha256 === entry.sha256)) result.push(repositoryOf(location));
      }
      return result;
    };

    /** Starts fetching `entry` from the upstreams (registered at once, so that requests meanwhile join it). */
    const startDownload = async (source: Location, file: string, entry: IndexEntry): Promise<Download> => {
      const key = keyOf(entry);
      const download: Download = {
        key,
        temp: store.tempPath(key),
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
      downloads.set(key, download);
      const candidates = await candidatesFor(source, file, entry);
      download.source = { file, entry, candidates };
      const job = {
        download,
        file,
        entry,
        hash: createHash(entry.sha256 === undefined ? 'md5' : 'sha256'),
        bound: entry.size ?? settings.maxSizeBytes,
        verdict: { rejected: false },
      };
      void run(job, candidates, (upstream) => {
        const set = passedOver.get(key) ?? new Set<string>();
        set.add(upstream);
        passedOver.set(key, set);
      });
      return download;
    };

    const served = async (): Promise<IndexState> => {
      const { state: now, failure } = await current();
      if (!now) throw failure.error(`/packages/${name}/: no upstream answered`);
      return now;
    };

    return {
      name,
      stats() {
        let entries = 0;
        let bytes = 0;
        for (const entry of state?.index.values() ?? []) {
          const size = store.sizeOf(keyOf(entry));
          if (size === undefined) continue;
          entries += 1;
          bytes += size;
        }
        return { ...counts, entries, bytes, stale: state?.stale ?? false };
      },
      invalidate() {
        generation += 1;
        if (state) state.readAt = 0;
        lastTry = 0;
      },
      readIndex: async () => (await served()).index,
      async files() {
        const now = await served();
        return [...now.index.keys(), ...now.files.keys()];
      },
      async answer(request, response, file, contentType) {
        const { state: now, failure } = await current();
        if (!now) {
          const answered = failure.error(`/packages/${name}/${file}: no upstream answered and no index is kept`);
          return { kind: 'answered', bytes: answerError(response, answered.code, answered.message) };
        }
        if (now.stale) {
          metrics.staleAnswers.inc({ repository: name });
          for (const [header, value] of Object.entries(STALE_HEADERS)) response.setHeader(header, value);
        }
        const base = { 'content-type': contentType, 'x-content-type-options': 'nosniff' };
        if (INDEX_FILES.includes(file)) return { kind: 'answered', bytes: answerIndexFile(request, response, now.files.get(file), file, base) };
        const entry = now.index.get(file);
        if (!entry) return { kind: 'answered', bytes: answerError(response, 'ERR_NOT_FOUND', `${file}: not in this repository`) };
        const key = keyOf(entry);
        const tag = `"${key}"`;
        const hit = store.acquire(key);
        if (hit) {
          metrics.hits.inc({ repository: name });
          counts.hits += 1;
          response.setHeader('x-autotest-cache', 'hit');
          return { kind: 'entry', path: hit.path, tag, stale: now.stale, release: hit.release };
        }
        const headers = { ...base, etag: tag, 'accept-ranges': 'bytes' };
        if (isFresh(request.headers, { etag: tag })) {
          response.writeHead(304, headers);
          response.end();
          return { kind: 'answered', bytes: 0 };
        }
        let download = downloads.get(key);
        if (download) {
          metrics.coalesced.inc({ repository: name });
          counts.coalesced += 1;
          response.setHeader('x-autotest-cache', 'coalesced');
        } else {
          if (request.method === 'HEAD') {
            response.writeHead(200, { ...headers, ...(entry.size === undefined ? {} : { 'content-length': entry.size.toString() }) });
            response.end();
            return { kind: 'answered', bytes: 0 };
          }
          metrics.misses.inc({ repository: name });
          counts.misses += 1;
          response.setHeader('x-autotest-cache', 'miss');
          download = await startDownload(now.source, file, entry);
        }
        return follow(download, request, response, headers, { name, counts });
      },
    };
  };

  return {
    repository,
    store,
    traffic: async () => [...samples, await sampleTraffic()],
    close() {
      clearInterval(sampler);
      for (const download of downloads.values()) download.abort?.();
    },
  };
}
