import { createHash, type Hash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import rangeParser from 'range-parser';
import type { FetchSettings } from '../config/index.js';
import { errnoCode } from '../errors.js';
import { UpstreamFailures } from './cache-failures.js';
import { bytesFrom, nextChange, type DownloadSource, type UpstreamDownload } from './cache-downloads.js';
import type { IndexFile } from './cache-index.js';
import type { CacheStore } from './cache-store.js';
import { isFresh } from './conditional.js';
import { answerError } from './error-answer.js';
import type { CacheMetrics } from './metrics.js';

const READ_CHUNK = 256 * 1024;

/** How a request to a cached repository was answered, or the verified entry the caller serves from disk (with Range and conditionals). */
export type CacheAnswer = { kind: 'answered'; bytes: number } | { kind: 'entry'; path: string; tag: string; stale: boolean; release: () => void };

/** What answers from downloads need: the store, the fetch settings, the metrics, and the served repository's counter of answers passed through. */
export interface AnswerContext {
  store: CacheStore;
  settings: FetchSettings;
  metrics: CacheMetrics;
  repository: string;
  countPassedThrough: () => void;
}

/** Where an answer of a spilled download goes on from: the bytes it sent, their digest, and the one byte it holds back. */
interface Continuation {
  position: number;
  hash: Hash;
  held: Buffer | undefined;
}

/** Bytes start..end (inclusive; Infinity: to the end, whatever the size) of a download an answer sends. */
interface Span {
  start: number;
  end: number;
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

/** An index file as the upstream has it (`kept`; undefined: the upstream has none), with its ETag and conditionals. */
export function answerIndexFile(
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

/**
 * Writes what the answer may have of the download, holding back its last byte until the bytes
 * are verified; for a spilled download, every byte on disk but the last, which it returns held.
 */
async function streamDownload(
  download: UpstreamDownload,
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

/** Sends what an upstream gives of `file` from `from.position` on, to the answer; its last byte held back. */
async function relayUpstream(
  response: ServerResponse,
  opened: { stream: Readable; start: number },
  bound: number,
  from: Continuation,
  metrics: CacheMetrics,
): Promise<{ sent: number; tooLong: boolean }> {
  let sent = 0;
  for await (const data of bytesFrom(opened.stream, from.position - opened.start)) {
    if (from.position + data.length > bound) return { sent, tooLong: true };
    from.hash.update(data);
    from.position += data.length;
    metrics.upstreamBytes.inc(data.length);
    const out = from.held ? Buffer.concat([from.held, data.subarray(0, data.length - 1)]) : data.subarray(0, data.length - 1);
    from.held = data.subarray(data.length - 1);
    sent += out.length;
    if (!response.write(out)) await drained(response);
    if (isGone(response)) break;
  }
  return { sent, tooLong: false };
}

/**
 * Streams `file` from the first candidate that gives it, from `from.position` on, to one
 * answer, keeping nothing: what an answer does when cache_dir's disk is full. The digest runs
 * over every byte sent, and the last one is held back until it matches the index.
 */
async function passThrough(
  response: ServerResponse,
  source: DownloadSource,
  headers: Record<string, string>,
  from: Continuation,
  context: AnswerContext,
): Promise<number> {
  const { file, entry, candidates } = source;
  const bound = entry.size ?? context.settings.maxSizeBytes;
  let sent = 0;
  let tooLong = false;
  const failures = new UpstreamFailures();
  for (const repository of candidates) {
    if (response.destroyed || tooLong || (entry.size !== undefined && from.position >= entry.size)) break;
    let stream: Readable | undefined;
    const cut = (): void => {
      stream?.destroy();
    };
    response.once('close', cut);
    try {
      const opened = await repository.open(file, from.position, context.settings.timeoutMs);
      stream = opened.stream;
      // The client may have left while the upstream was opened (the narrowing above cannot know).
      if (isGone(response)) break;
      if (!response.headersSent) response.writeHead(200, { ...headers, ...(entry.size === undefined ? {} : { 'content-length': entry.size.toString() }) });
      const relayed = await relayUpstream(response, opened, bound, from, context.metrics);
      sent += relayed.sent;
      tooLong = relayed.tooLong;
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
  sent += endPassThrough(response, source, from, tooLong, context.metrics);
  context.metrics.servedBytes.inc(sent);
  return sent;
}

/** Sends the byte held back when the bytes relayed are the index's, else cuts the answer; returns the bytes sent. */
function endPassThrough(response: ServerResponse, { entry }: DownloadSource, from: Continuation, tooLong: boolean, metrics: CacheMetrics): number {
  const whole = !tooLong && (entry.size === undefined || from.position === entry.size) && from.hash.digest('hex') === (entry.sha256 ?? entry.md5);
  if (!whole || response.destroyed) {
    if (!response.destroyed) metrics.rejected.inc({ reason: tooLong ? 'size' : 'checksum' });
    // Never the last byte of a wrong or cut copy.
    response.destroy();
    return 0;
  }
  response.end(from.held);
  return from.held?.length ?? 0;
}

function notePassedThrough(response: ServerResponse, context: AnswerContext): void {
  context.metrics.passedThrough.inc({ repository: context.repository });
  context.countPassedThrough();
  response.setHeader('x-autotest-cache', 'pass');
}

/** Answers one request from a download under way: headers once an upstream answered, then the bytes as they arrive. */
export async function answerFromDownload(
  download: UpstreamDownload,
  request: IncomingMessage,
  response: ServerResponse,
  headers: Record<string, string>,
  context: AnswerContext,
): Promise<CacheAnswer> {
  while (download.state === 'opening') {
    if (response.destroyed) return { kind: 'answered', bytes: 0 };
    await nextChange(download, response);
  }
  for (;;) {
    if (download.state === 'failed')
      return {
        kind: 'answered',
        bytes: answerError(response, download.failure?.code ?? 'ERR_FETCH', download.failure?.message ?? 'the upstream download failed'),
      };
    if (download.state === 'spilled' && download.source) {
      notePassedThrough(response, context);
      const hash = createHash(download.source.entry.sha256 === undefined ? 'md5' : 'sha256');
      return { kind: 'answered', bytes: await passThrough(response, download.source, headers, { position: 0, hash, held: undefined }, context) };
    }
    if (download.state === 'done') {
      const entry = context.store.acquire(download.key);
      if (!entry)
        return { kind: 'answered', bytes: answerError(response, 'ERR_UNAVAILABLE', 'the entry was evicted just now; try again', { 'retry-after': '1' }) };
      return { kind: 'entry', path: entry.path, tag: `"${download.key}"`, stale: false, release: entry.release };
    }
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
      return await answerFromTemp(download, handle, request, response, headers, context);
    } finally {
      download.readers.delete(reader);
      reader.release?.();
      await handle.close();
    }
  }
}

/** Answers from the download's temp file (open as `handle`) as it grows, going on from an upstream if the download spills. */
async function answerFromTemp(
  download: UpstreamDownload,
  handle: FileHandle,
  request: IncomingMessage,
  response: ServerResponse,
  headers: Record<string, string>,
  context: AnswerContext,
): Promise<CacheAnswer> {
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
  context.metrics.servedBytes.inc(sent);
  if (!spilled || !download.source) return { kind: 'answered', bytes: sent };
  context.metrics.passedThrough.inc({ repository: context.repository });
  context.countPassedThrough();
  return { kind: 'answered', bytes: sent + (await passThrough(response, download.source, headers, spilled, context)) };
}
