import { randomUUID } from 'node:crypto';
import { constants, watch, type FSWatcher, type Stats } from 'node:fs';
import { mkdir, open, readdir, stat, type FileHandle } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import path from 'node:path';
import etag from 'etag';
import rangeParser from 'range-parser';
import type { FastifyBaseLogger } from 'fastify';
import { pino } from 'pino';
import { isFresh } from './conditional.js';
import { escapeHtml } from './html.js';
import type { CachedUpstreams, ServedLocation } from '../config/index.js';
import type { CachedRepository } from './cache.js';
import type { ServerMetrics } from './metrics.js';
import { describeError, errnoCode, isAutotestError } from '../errors.js';
import { answerError } from './error-answer.js';
import type { StreamBuffers } from './stream-buffers.js';

export type ServedRepository =
  /** A folder, served from the disk. */
  | { name: 'builtin' | 'custom'; location: Exclude<ServedLocation, CachedUpstreams> }
  /** Upstreams served through the caching front. */
  | { name: 'builtin' | 'custom'; location: CachedUpstreams; cached: CachedRepository };

/** Files up to this size are answered from memory (the index files, most test packages). */
const SMALL_FILE_BYTES = 256 * 1024;
const CACHE_LIMIT_BYTES = 32 * 1024 * 1024;
/** A cached file is checked against the disk again after this long, even if no change was seen. */
const REVALIDATE_MS = 1000;
const LOGGED_LEVELS = new Set(['trace', 'debug', 'info']);

interface Cached {
  body: Buffer;
  stat: Stats;
  checkedAt: number;
  /** Validators and the headers of a whole-file 200, computed once when the file is cached. */
  tag: string;
  modified: string;
  headers: string[];
}

/** Strong: inode, size and mtime to the nanosecond, so If-Range never splices two versions. */
function strongTag(stat: Stats): string {
  return etag(stat, { weak: false }).replace(/"$/, `-${stat.ino.toString(36)}-${Math.round(stat.mtimeMs * 1000).toString(36)}"`);
}

function cacheEntry(file: string, body: Buffer, stat: Stats, checkedAt: number): Cached {
  const tag = strongTag(stat);
  const modified = stat.mtime.toUTCString();
  const headers = [
    'accept-ranges',
    'bytes',
    'etag',
    tag,
    'last-modified',
    modified,
    'content-type',
    contentType(file),
    'x-content-type-options',
    'nosniff',
    'content-length',
    body.length.toString(),
  ];
  return { body, stat, checkedAt, tag, modified, headers };
}

/** Request headers that make an answer other than the whole file's 200. */
function plainRequest(request: IncomingMessage): boolean {
  const headers = request.headers;
  return headers.range === undefined && headers['if-none-match'] === undefined && headers['if-modified-since'] === undefined;
}

/**
 * The access line as pino writes it ({"level":30,"time":...,<bindings>,...,"msg":...}),
 * assembled by hand and written to the logger's own destination: pino's serializer (and its
 * redaction, which has nothing to redact here) was most of the cost of a cached answer.
 * Undefined when the logger is not a plain pino one, and the caller uses log.info.
 */
function accessLineWriter(
  log: FastifyBaseLogger,
): ((reqId: string, method: string, url: string, status: number, bytes: number, responseTime: number) => void) | undefined {
  const fields = log as unknown as Record<symbol, unknown>;
  const stream = fields[pino.symbols.streamSym];
  const bindings = fields[pino.symbols.chindingsSym];
  const messageKey = fields[pino.symbols.messageKeySym];
  const timeSym = fields[pino.symbols.timeSym];
  if (typeof stream !== 'object' || stream === null || !('write' in stream) || typeof stream.write !== 'function') return undefined;
  if (typeof bindings !== 'string' || messageKey !== 'msg' || timeSym !== pino.stdTimeFunctions.epochTime) return undefined;
  const write = stream.write.bind(stream) as (line: string) => unknown;
  return (reqId, method, url, status, bytes, responseTime) => {
    write(
      `{"level":30,"time":${Date.now().toString()}${bindings},"reqId":${JSON.stringify(reqId)},"req":{"method":${JSON.stringify(method)},"url":${JSON.stringify(url)}},"res":{"statusCode":${status.toString()}},"bytes":${bytes.toString()},"responseTime":${responseTime.toString()},"msg":"request completed"}\n`,
    );
  };
}

const CONTENT_TYPES: [RegExp, string][] = [
  [/\.checksum$/, 'text/plain; charset=utf-8'],
  [/\.json$/, 'application/json; charset=utf-8'],
  [/\.bz2$/, 'application/x-bzip2'],
  [/\.gz$/, 'application/gzip'],
  [/\.zst$/, 'application/zstd'],
];

function contentType(file: string): string {
  return CONTENT_TYPES.find(([pattern]) => pattern.test(file))?.[1] ?? 'application/octet-stream';
}

/**
 * A repository is a flat folder: the only names ever opened are single path segments that
 * are plain file names (no "/", "\", NUL, no leading dot). Anything else is not ours to
 * answer, so no URL, however encoded, reaches outside the folder.
 */
function fileNameFrom(encoded: string): string | undefined {
  let name: string;
  try {
    name = decodeURIComponent(encoded);
  } catch {
    return undefined;
  }
  if (name === '' || name.startsWith('.') || /[/\\\0]/.test(name) || name.length > 255) return undefined;
  return name;
}

/**
 * `bytes=-N` with N at least the file's size asks for the whole file (RFC 9110 §14.1.1: "the
 * entire representation is used"); range-parser would call it unsatisfiable.
 */
function wholeForLongSuffix(header: string, size: number): string {
  const suffix = /^\s*bytes\s*=\s*-\s*(\d+)\s*$/i.exec(header)?.[1];
  return suffix !== undefined && size > 0 && Number(suffix) >= size ? `bytes=0-${(size - 1).toString()}` : header;
}

/**
 * `full` opened to be served: opened before it is looked at, so what is checked is what is
 * sent; never through a symlink. A failure is answered here, and its body bytes returned.
 */
async function openToServe(response: ServerResponse, full: string, file: string): Promise<FileHandle | number> {
  try {
    return await open(full, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (error) {
    const code = errnoCode(error) ?? '';
    if (NOT_THERE.has(code)) return answerError(response, 'ERR_NOT_FOUND', `${file}: not in this repository`);
    // Out of descriptors or memory is this server's state, not the file's: a client that
    // took it for "not found" would never ask again.
    if (OUT_OF_RESOURCES.has(code))
      return answerError(response, 'ERR_UNAVAILABLE', `${file}: the server is out of resources (${code}); try again`, { 'retry-after': '1' });
    return answerError(response, 'ERR_SERVER', `${file}: cannot open it (${code || describeError(error)})`);
  }
}

/** Watches `dir`: a change to a file calls `forget` with its name; one whose name is not known, or a failed watch, with null. */
function watchFolder(dir: string, forget: (file: string | null) => void): FSWatcher {
  const watcher = watch(dir, { persistent: false }, (_event, file) => {
    forget(typeof file === 'string' ? file : null);
  });
  watcher.on('error', () => {
    forget(null);
  });
  return watcher;
}

/** open() failures that mean the file is not there (a symlink counts: it is never served). */
const NOT_THERE = new Set(['ENOENT', 'ENOTDIR', 'ELOOP', 'ENAMETOOLONG']);
/** open() failures of the server's own state, gone when load drops. */
const OUT_OF_RESOURCES = new Set(['EMFILE', 'ENFILE', 'ENOMEM', 'EAGAIN']);

function sameFile(a: Stats, b: Stats): boolean {
  return a.ino === b.ino && a.size === b.size && a.mtimeMs === b.mtimeMs && a.dev === b.dev;
}

/**
 * Sends bytes start..end of an open file: one buffer per download, read into and written
 * from again and again (the write callback says the bytes left it), so a download holds one
 * buffer whatever its size, and buffers are reused across downloads instead of allocated per
 * chunk. The buffer shrinks as downloads multiply (see StreamBuffers).
 */
async function pumpFile(handle: FileHandle, response: ServerResponse, span: { start: number; end: number }, buffers: StreamBuffers): Promise<boolean> {
  const { start, end } = span;
  // The client may have left while the file was being opened: then 'close' has fired already.
  if (response.destroyed || response.writableEnded) return false;
  const buffer = buffers.take();
  // A client that goes away never gets its write callback: closing wakes the pump instead.
  const state: { closed: boolean; finished: boolean; wake: (() => void) | undefined } = { closed: false, finished: false, wake: undefined };
  const onClose = (): void => {
    state.closed = true;
    state.wake?.();
  };
  response.on('close', onClose);
  try {
    let position = start;
    while (position <= end && !state.closed) {
      const { bytesRead } = await handle.read(buffer, 0, Math.min(buffer.length, end - position + 1), position);
      if (bytesRead === 0) break;
      position += bytesRead;
      const chunk = buffer.subarray(0, bytesRead);
      await new Promise<void>((resolve) => {
        state.wake = resolve;
        // A failed write means the client is gone; 'finish' (not end's callback) marks the last bytes out.
        const done = (error?: Error | null): void => {
          if (error) state.closed = true;
          resolve();
        };
        if (position > end) {
          response.once('finish', () => {
            state.finished = true;
            resolve();
          });
          response.end(chunk);
        } else response.write(chunk, done);
      });
      state.wake = undefined;
    }
    // The file shrank under us, or the client left: never pretend the body was complete.
    if (position <= end && !state.closed) response.destroy();
    // A response emits 'close' after 'finish' too, before this code runs again: finished is what counts.
    return position > end && (state.finished || !state.closed);
  } finally {
    response.off('close', onClose);
    buffers.release(buffer);
  }
}

export interface RepositoryHandler {
  /** Answers GET and HEAD under /packages/NAME/; returns false for anything else. */
  handle(request: IncomingMessage, response: ServerResponse): boolean;
  /** From now on every answer closes its connection, so keep-alive clients let shutdown end. */
  closing(): void;
  close(): void;
}

/**
 * Serves each repository folder at /packages/NAME/ as Apache does in the seed: GET and HEAD,
 * Range (via range-parser), ETag and Last-Modified with their conditional requests (via
 * fresh), listings; small files from memory, kept fresh by inotify and a one-second recheck,
 * large ones streamed from an already opened descriptor (O_NOFOLLOW) in 1 MB reads.
 *
 * It runs before Fastify's router: through @fastify/send the same requests cost a stat, an
 * open and a stream each and ran at a quarter of nginx's rate (see README, benchmark).
 */
export async function createRepositoryHandler(
  repositories: ServedRepository[],
  metrics: ServerMetrics,
  log: FastifyBaseLogger,
  buffers: StreamBuffers,
): Promise<RepositoryHandler> {
  const byName = new Map<string, ServedRepository>();
  const caches = new Map<string, Map<string, Cached>>();
  const watchers: FSWatcher[] = [];
  let cachedBytes = 0;
  let shuttingDown = false;
  const labelled = new Map<string, { requests: { inc: () => void }; duration: { observe: (value: number) => void } }>();
  for (const repository of repositories) {
    byName.set(repository.name, repository);
    if (repository.location.kind !== 'local') continue;
    const dir = repository.location.path;
    await mkdir(dir, { recursive: true });
    const cache = new Map<string, Cached>();
    caches.set(repository.name, cache);
    const forget = (file: string | null): void => {
      for (const [name, entry] of cache) {
        if (file !== null && name !== file) continue;
        cachedBytes -= entry.body.length;
        cache.delete(name);
      }
    };
    watchers.push(watchFolder(dir, forget));
  }

  const accessLine = accessLineWriter(log);
  const finish = (request: IncomingMessage, response: ServerResponse, started: number, repository: string, bytes: number, reqId: string): void => {
    // Label sets are few (method x repository x status): their metric children are made once.
    const key = `${request.method ?? 'GET'} ${repository} ${response.statusCode.toString()}`;
    let children = labelled.get(key);
    if (!children) {
      const route = `/packages/${repository}/*`;
      children = {
        requests: metrics.requests.labels(request.method ?? 'GET', route, response.statusCode.toString()),
        duration: metrics.duration.labels(request.method ?? 'GET', route),
      };
      labelled.set(key, children);
    }
    children.requests.inc();
    children.duration.observe((performance.now() - started) / 1000);
    metrics.bytesSent.inc(bytes);
    if (response.statusCode === 503) metrics.errors.inc({ kind: 'unavailable' });
    else if (response.statusCode >= 500) metrics.errors.inc({ kind: 'server' });
    else if (response.statusCode >= 400) metrics.errors.inc({ kind: response.statusCode === 404 ? 'not_found' : 'client' });
    if (LOGGED_LEVELS.has(log.level)) {
      if (accessLine) accessLine(reqId, request.method ?? 'GET', request.url ?? '', response.statusCode, bytes, performance.now() - started);
      else
        log.info(
          {
            reqId,
            req: { method: request.method, url: request.url },
            res: { statusCode: response.statusCode },
            bytes,
            responseTime: performance.now() - started,
          },
          'request completed',
        );
    }
  };

  /** Headers, conditional requests and Range for one file; returns the byte span to send, or undefined when answered. */
  const prepare = (
    request: IncomingMessage,
    response: ServerResponse,
    file: string,
    stat: Stats,
    fixedTag?: string,
    fixedModified?: string,
  ): { start: number; end: number } | number => {
    const tag = fixedTag ?? strongTag(stat);
    const modified = fixedModified ?? stat.mtime.toUTCString();
    response.setHeader('accept-ranges', 'bytes');
    response.setHeader('etag', tag);
    response.setHeader('last-modified', modified);
    response.setHeader('content-type', contentType(file));
    response.setHeader('x-content-type-options', 'nosniff');
    if (
      (request.headers['if-none-match'] !== undefined || request.headers['if-modified-since'] !== undefined) &&
      isFresh(request.headers, { etag: tag, 'last-modified': modified })
    ) {
      response.statusCode = 304;
      response.end();
      return 0;
    }
    let start = 0;
    let end = stat.size - 1;
    const rangeHeader = request.headers.range;
    const ifRange = request.headers['if-range'];
    const rangeApplies =
      rangeHeader !== undefined &&
      (ifRange === undefined || (typeof ifRange === 'string' && !ifRange.startsWith('W/') && (ifRange === tag || ifRange === modified)));
    // A unit other than bytes is ignored (RFC 9110 §14.2): the whole file, 200.
    if (rangeApplies && /^\s*bytes\s*=/i.test(rangeHeader)) {
      const ranges = rangeParser(stat.size, wholeForLongSuffix(rangeHeader, stat.size), { combine: true });
      if (ranges === -1) return answerError(response, 'ERR_RANGE', `${file}: range not satisfiable`, { 'content-range': `bytes */${stat.size.toString()}` });
      // A malformed header (-2) or several ranges: the whole file, as RFC 9110 allows.
      if (ranges !== -2 && ranges.length === 1 && ranges[0]) {
        start = ranges[0].start;
        end = ranges[0].end;
        response.statusCode = 206;
        response.setHeader('content-range', `bytes ${start.toString()}-${end.toString()}/${stat.size.toString()}`);
      }
    }
    response.setHeader('content-length', Math.max(0, end - start + 1));
    return { start, end };
  };

  const serveFile = async (request: IncomingMessage, response: ServerResponse, repository: ServedRepository, file: string): Promise<number> => {
    if ('cached' in repository) {
      const answer = await repository.cached.answer(request, response, file, contentType(file));
      if (answer.kind === 'answered') return answer.bytes;
      try {
        const bytes = await serveFromDisk(request, response, answer.path, file, undefined, answer.tag);
        metrics.cache.servedBytes.inc(bytes);
        return bytes;
      } finally {
        answer.release();
      }
    }
    return serveFromDisk(request, response, path.join(repository.location.path, file), file, caches.get(repository.name));
  };

  /** The cached copy of `file`, checked against the disk again when its last check is over a second old; undefined once it changed. */
  const stillCached = async (cache: Map<string, Cached>, full: string, file: string): Promise<Cached | undefined> => {
    const now = performance.now();
    const cached = cache.get(file);
    if (!cached || now - cached.checkedAt <= REVALIDATE_MS) return cached;
    const current = await stat(full).catch(() => undefined);
    if (current && sameFile(current, cached.stat)) {
      cached.checkedAt = now;
      return cached;
    }
    cache.delete(file);
    cachedBytes -= cached.body.length;
    return undefined;
  };

  /** One file from the disk: small ones kept in `cache` when given, the rest streamed; `fixedTag` for content whose name is its checksum. */
  const serveFromDisk = async (
    request: IncomingMessage,
    response: ServerResponse,
    full: string,
    file: string,
    cache: Map<string, Cached> | undefined,
    fixedTag?: string,
  ): Promise<number> => {
    const cached = cache && (await stillCached(cache, full, file));
    if (cached) {
      const span = prepare(request, response, file, cached.stat, cached.tag, cached.modified);
      if (typeof span === 'number') return span;
      if (request.method === 'HEAD') {
        response.end();
        return 0;
      }
      response.end(cached.body.subarray(span.start, span.end + 1));
      return span.end - span.start + 1;
    }
    const handle = await openToServe(response, full, file);
    if (typeof handle === 'number') return handle;
    try {
      const opened = await handle.stat();
      if (!opened.isFile()) return answerError(response, 'ERR_NOT_FOUND', `${file}: not in this repository`);
      if (cache && opened.size <= SMALL_FILE_BYTES) {
        const body = await handle.readFile();
        // Written in place meanwhile (not by our packager, which renames): answer nothing half-right.
        if (body.length !== opened.size) {
          response.destroy();
          return 0;
        }
        if (cachedBytes + body.length > CACHE_LIMIT_BYTES) {
          for (const c of caches.values()) c.clear();
          cachedBytes = 0;
        }
        cachedBytes += body.length - (cache.get(file)?.body.length ?? 0);
        const entry = cacheEntry(file, body, opened, performance.now());
        cache.set(file, entry);
        const span = prepare(request, response, file, opened, entry.tag, entry.modified);
        if (typeof span === 'number') return span;
        response.end(request.method === 'HEAD' ? undefined : body.subarray(span.start, span.end + 1));
        return request.method === 'HEAD' ? 0 : span.end - span.start + 1;
      }
      const span = prepare(request, response, file, opened, fixedTag);
      if (typeof span === 'number') return span;
      if (request.method === 'HEAD' || span.end < span.start) {
        response.end();
        return 0;
      }
      return (await pumpFile(handle, response, span, buffers)) ? span.end - span.start + 1 : 0;
    } finally {
      await handle.close();
    }
  };

  const serveListing = async (response: ServerResponse, repository: ServedRepository): Promise<number> => {
    let names: string[];
    if ('cached' in repository) {
      try {
        names = await repository.cached.files();
      } catch (error) {
        if (!isAutotestError(error)) throw error;
        return answerError(response, error.code, `/packages/${repository.name}/: ${error.message}`);
      }
    } else {
      names = (await readdir(repository.location.path, { withFileTypes: true }))
        .filter((entry) => !entry.name.startsWith('.') && entry.isFile())
        .map((entry) => entry.name);
    }
    const rows = names
      .sort()
      .map((name) => `<li><a href="${escapeHtml(encodeURIComponent(name))}">${escapeHtml(name)}</a></li>`)
      .join('\n');
    const prefix = `/packages/${repository.name}/`;
    const body = `<!doctype html><html><head><meta charset="utf-8"><title>Index of ${prefix}</title></head><body><h1>Index of ${prefix}</h1><ul>\n${rows}\n</ul></body></html>`;
    response.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(body) });
    response.end(body);
    return body.length;
  };

  /**
   * A folder's URL without its slash answers 301 to the slash, as Apache and nginx do:
   * Autotest's HTTP fetcher probes the base URL of fetch_location (written without a slash in
   * the seed) and skips a repository whose probe fails. The Location is built from the
   * repository's own name, never from the request's path, so it cannot point elsewhere.
   */
  const redirectToFolder = (request: IncomingMessage, response: ServerResponse, repository: ServedRepository, query: string): number => {
    const location = `/packages/${repository.name}/${query}`;
    const body = `<!doctype html><html><head><title>301 Moved Permanently</title></head><body><a href="${escapeHtml(location)}">${escapeHtml(location)}</a></body></html>`;
    response.writeHead(301, { location, 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(body) });
    response.end(request.method === 'HEAD' ? undefined : body);
    return request.method === 'HEAD' ? 0 : body.length;
  };

  return {
    handle(request, response) {
      if (request.method !== 'GET' && request.method !== 'HEAD') return false;
      const url = request.url ?? '';
      const match = /^\/packages\/(builtin|custom)(?:\/([^/?#]*))?(\?[^#]*)?$/.exec(url);
      const repository = match ? byName.get(match[1] ?? '') : undefined;
      if (!match || !repository) return false;
      const encoded = match[2];
      const file = encoded === undefined || encoded === '' ? '' : fileNameFrom(encoded);
      if (file === undefined) return false;
      const started = performance.now();
      const given = request.headers['x-request-id'];
      const requestId = typeof given === 'string' && /^[\w.-]{1,64}$/.test(given) ? given : randomUUID();
      // The most asked-for files (the index) in their most usual request: a cached file checked
      // against the disk within the last second, whole, unconditional. Answered at once, with
      // the header block made when the file was cached.
      if (file !== '' && !shuttingDown && plainRequest(request)) {
        const cached = caches.get(repository.name)?.get(file);
        if (cached && started - cached.checkedAt <= REVALIDATE_MS) {
          response.writeHead(200, ['x-request-id', requestId, ...cached.headers]);
          const head = request.method === 'HEAD';
          response.end(head ? undefined : cached.body);
          finish(request, response, started, repository.name, head ? 0 : cached.body.length, requestId);
          return true;
        }
      }
      if (shuttingDown) response.setHeader('connection', 'close');
      response.setHeader('x-request-id', requestId);
      // Settled as a promise so that a header Node refuses is answered 500, never thrown out of handle().
      const answer =
        encoded === undefined
          ? Promise.resolve().then(() => redirectToFolder(request, response, repository, match[3] ?? ''))
          : file === ''
            ? serveListing(response, repository)
            : serveFile(request, response, repository, file);
      answer.then(
        (bytes) => {
          finish(request, response, started, repository.name, bytes, requestId);
        },
        (error: unknown) => {
          log.error({ err: { message: error instanceof Error ? error.message : String(error) }, url }, 'serving a repository file failed');
          if (!response.headersSent) answerError(response, 'ERR_SERVER', 'internal error; see the server log');
          else response.destroy();
          finish(request, response, started, repository.name, 0, requestId);
        },
      );
      return true;
    },
    closing() {
      shuttingDown = true;
    },
    close() {
      for (const watcher of watchers) watcher.close();
    },
  };
}
