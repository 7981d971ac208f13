import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { FetchSettings, Location } from '../../config/index.js';
import { describeLocation } from '../../config/index.js';
import { classifyNetworkError, FetchFailure } from '../read-failure.js';
import { notFound, readIndexThrough } from '../read-index.js';
import type { FetchRepository, Opened, Revalidated } from '../types.js';
import type { HttpAgents } from './agents.js';

/** A GET answered 200 or 304 (asked with If-None-Match) as what readIfChanged gives. */
export function revalidated(response: IncomingMessage): Revalidated {
  if (response.statusCode === 304) {
    response.resume();
    return { unchanged: true };
  }
  const etag = response.headers.etag;
  return { unchanged: false, stream: response, etag: typeof etag === 'string' && etag !== '' ? etag : undefined };
}

/** A download that moves no byte for this long is cut and tried again. */
const MAX_STALL_MS = 30_000;

/** What a GET answered other than 200/206, for the scheme to turn into a FetchFailure. */
export type RefusedAnswer = (status: number, body: string, what: string) => FetchFailure;

/** Plain HTTP: 404/410 not found, 416 a refused range, 5xx/429/408 transient, anything else final. */
const httpRefusal: RefusedAnswer = (status, _body, what) => {
  if (status === 404 || status === 410) return notFound(what);
  if (status === 416) return new FetchFailure(`${what}: the server refused the range asked (416)`, { transient: true, down: false, rangeRefused: true });
  if (status >= 500 || status === 429 || status === 408)
    return new FetchFailure(`${what}: the server answered ${status.toString()}`, { transient: true, down: false });
  return new FetchFailure(`${what}: the server answered ${status.toString()}`, { transient: false, down: false });
};

/** Error answers are read up to this much (an S3 error document names its code). */
const ERROR_BODY_LIMIT = 16 * 1024;

/** The start of an error answer's body (all of it is consumed); what arrived when it breaks off. */
export async function errorBody(response: IncomingMessage): Promise<string> {
  let body = '';
  response.setEncoding('utf8');
  try {
    for await (const chunk of response) {
      if (body.length < ERROR_BODY_LIMIT) body += chunk as string;
    }
  } catch {
    // A broken-off error answer still has its status.
  }
  return body;
}

/** How httpGet asks, and whom: the file's name for messages, the agents its connections come from. */
export interface HttpGetOptions {
  headers: Record<string, string>;
  what: string;
  settings: FetchSettings;
  refusal: RefusedAnswer;
  agents: HttpAgents;
}

/**
 * One GET with a connect timeout, a stall timeout and, for a body, an overall deadline; the
 * response when it is 200 or 206, else the FetchFailure `refusal` makes of it.
 */
export function httpGet(url: URL, offset: number, options: HttpGetOptions): Promise<IncomingMessage> {
  const { what, settings, refusal } = options;
  return new Promise((resolve, reject) => {
    const client = url.protocol === 'https:' ? https : http;
    const headers: Record<string, string> = { 'user-agent': 'autotest-client', 'accept-encoding': 'identity', ...options.headers };
    if (offset > 0) headers.range = `bytes=${offset.toString()}-`;
    const request = client.get(url, { headers, agent: options.agents.agentFor(url, settings.tls) });
    const connectTimer = setTimeout(() => {
      request.destroy(
        new FetchFailure(`${what}: no connection within ${(settings.connectTimeoutMs / 1000).toString()} s`, { transient: false, down: true, timedOut: true }),
      );
    }, settings.connectTimeoutMs);
    const deadline = setTimeout(() => {
      request.destroy(
        new FetchFailure(`${what}: not complete within ${(settings.timeoutMs / 1000).toString()} s (fetch_timeout)`, {
          transient: true,
          down: true,
          timedOut: true,
        }),
      );
    }, settings.timeoutMs);
    request.on('socket', (socket) => {
      // A kept-alive socket is connected already; only a new one gets a listener.
      if (!socket.connecting) clearTimeout(connectTimer);
      else
        socket.once('connect', () => {
          clearTimeout(connectTimer);
        });
    });
    request.setTimeout(Math.min(MAX_STALL_MS, settings.timeoutMs), () => {
      request.destroy(
        new FetchFailure(`${what}: no data for ${(Math.min(MAX_STALL_MS, settings.timeoutMs) / 1000).toString()} s`, {
          transient: true,
          down: true,
          timedOut: true,
        }),
      );
    });
    request.on('close', () => {
      clearTimeout(connectTimer);
      clearTimeout(deadline);
    });
    request.on('error', (error) => {
      clearTimeout(connectTimer);
      reject(classifyNetworkError(error, what));
    });
    request.on('response', (response) => {
      clearTimeout(connectTimer);
      const status = response.statusCode ?? 0;
      if (status === 200 || status === 206 || (status === 304 && 'if-none-match' in headers)) {
        // Errors of the body (reset, stall, deadline) reach the reader as FetchFailures.
        request.on('error', (error) => response.destroy(classifyNetworkError(error, what)));
        resolve(response);
        return;
      }
      void errorBody(response).then((body) => {
        reject(refusal(status, body, what));
      });
    });
  });
}

/** A 200 or 206 answer as the bytes from `offset` on (a server that ignores ranges starts at 0). */
export function openedFrom(response: IncomingMessage, offset: number, what: string): Opened {
  if (response.statusCode === 206) {
    const range = /^bytes (\d+)-/.exec(response.headers['content-range'] ?? '');
    if (!range || Number(range[1]) !== offset) {
      response.destroy();
      throw new FetchFailure(`${what}: the server sent another range than asked (${response.headers['content-range'] ?? 'none'})`, {
        transient: true,
        down: false,
      });
    }
    return { stream: response, start: offset };
  }
  return { stream: response, start: 0 };
}

/** nginx and Apache answer 400 or 403 over a finished handshake when a client certificate is missing or not trusted. */
const httpsRefusal: RefusedAnswer = (status, body, what) => {
  const failure = httpRefusal(status, body, what);
  if (status !== 400 && status !== 403) return failure;
  return new FetchFailure(failure.message, {
    transient: false,
    down: false,
    hint: 'if the server verifies client certificates, set fetch_client_cert and fetch_client_key ([PACKAGES])',
  });
};

export function httpRepository(location: Extract<Location, { kind: 'http' }>, settings: FetchSettings, agents: HttpAgents): FetchRepository {
  const name = describeLocation(location);
  const refusal = location.url.startsWith('https:') ? httpsRefusal : httpRefusal;
  const get = (file: string, offset: number, timeoutMs = settings.timeoutMs, conditions: Record<string, string> = {}): Promise<IncomingMessage> =>
    httpGet(new URL(`${location.url}/${encodeURIComponent(file)}`), offset, {
      headers: conditions,
      what: `${name}/${file}`,
      settings: { ...settings, timeoutMs },
      refusal,
      agents,
    });
  return repositoryOverGet(name, get);
}

/** One GET of a repository's file from `offset` on, within `timeoutMs`, with extra conditions (If-None-Match). */
export type RepositoryGet = (file: string, offset: number, timeoutMs?: number, conditions?: Record<string, string>) => Promise<IncomingMessage>;

/** A repository read over HTTP GETs (plain, or signed for S3): its index, its files from an offset, and revalidation by ETag. */
export function repositoryOverGet(name: string, get: RepositoryGet): FetchRepository {
  return {
    name,
    readIndex: (trust) => readIndexThrough(name, (file) => get(file, 0), trust),
    async open(file, offset, timeoutMs) {
      return openedFrom(await get(file, offset, timeoutMs), offset, `${name}/${file}`);
    },
    readIfChanged: async (file, etag, timeoutMs) => revalidated(await get(file, 0, timeoutMs, etag === undefined ? {} : { 'if-none-match': etag })),
  };
}
