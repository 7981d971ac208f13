import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import { pipeline } from 'node:stream/promises';
import type { FetchSettings, S3Location } from '../config/index.js';
import { agentFor, errorBody, fetchRepositoryFor } from '../fetch/index.js';
import type { RepositoryIndex } from '../packages/index.js';
import { s3AnswerProblem, s3Problem } from '../s3/client.js';
import { signGet } from '../s3/sign.js';

type AnswerError = (response: ServerResponse, status: number, message: string, extra?: Record<string, string>) => number;

const SINGLE_RANGE_RE = /^bytes=(?:\d+-\d*|-\d+)$/;
/** An S3 answer that moves no byte for this long is cut. */
const UPSTREAM_IDLE_MS = 60_000;
/** Index reads for listings and the frontend: one try, the fetcher's timeouts. */
const INDEX_READ: FetchSettings = { connectTimeoutMs: 5000, timeoutMs: 60_000, retries: 0, cooldownMs: 0, maxSizeBytes: 1e9 };

/** One signed request to S3 for `file`; resolves with S3's answer, whatever its status. */
async function upstream(location: S3Location, file: string, method: 'GET' | 'HEAD', headers: Record<string, string>): Promise<IncomingMessage> {
  const signed = await signGet(location, file, method);
  const client = signed.url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const request = client.request(signed.url, {
      method, headers: { ...signed.headers, ...headers }, agent: agentFor(signed.url),
    });
    request.setTimeout(UPSTREAM_IDLE_MS, () => { request.destroy(new Error(`no answer from S3 for ${String(UPSTREAM_IDLE_MS / 1000)} s`)); });
    request.on('error', reject);
    request.on('response', resolve);
    request.end();
  });
}

/**
 * Answers GET/HEAD of one file of an S3 repository by streaming the object through, with a
 * signed request per answer (the client's signer, not the full SDK: see loadS3Sdk). Range,
 * If-None-Match and If-Modified-Since go to S3 as they came; If-Range with a strong ETag
 * becomes a ranged GET with If-Match (a 412 then means "send it whole"); every other If-Range
 * gets the whole file, as RFC 9110 allows. Returns the body bytes sent.
 */
export async function serveS3File(
  request: IncomingMessage, response: ServerResponse, location: S3Location, file: string,
  contentType: string, answerError: AnswerError,
): Promise<number> {
  const method = request.method === 'HEAD' ? 'HEAD' : 'GET';
  const rangeHeader = request.headers.range;
  const ifRange = request.headers['if-range'];
  let range = typeof rangeHeader === 'string' && SINGLE_RANGE_RE.test(rangeHeader) ? rangeHeader : undefined;
  let ifMatch: string | undefined;
  if (range !== undefined && ifRange !== undefined) {
    if (typeof ifRange === 'string' && ifRange.startsWith('"')) ifMatch = ifRange;
    else range = undefined;
  }
  const conditions: Record<string, string> = {};
  const ifNoneMatch = request.headers['if-none-match'];
  const since = request.headers['if-modified-since'];
  if (typeof ifNoneMatch === 'string') conditions['if-none-match'] = ifNoneMatch;
  else if (typeof since === 'string' && !Number.isNaN(new Date(since).getTime())) conditions['if-modified-since'] = since;
  const ranged = range === undefined ? {} : { range, ...(ifMatch === undefined ? {} : { 'if-match': ifMatch }) };

  let answer: IncomingMessage;
  try {
    answer = await upstream(location, file, method, { ...conditions, ...ranged });
    // If-Range did not match: the whole file, fresh.
    if (answer.statusCode === 412 && ifMatch !== undefined) {
      answer.resume();
      answer = await upstream(location, file, method, conditions);
    }
  } catch (error) {
    return answerError(response, 502, `${file}: the S3 repository behind this server failed: ${s3Problem(error).why}`);
  }
  const status = answer.statusCode ?? 502;
  const headers: Record<string, string | number> = { 'accept-ranges': 'bytes', 'content-type': contentType, 'x-content-type-options': 'nosniff' };
  for (const name of ['content-length', 'content-range', 'etag', 'last-modified']) {
    const value = answer.headers[name];
    if (typeof value === 'string') headers[name] = value;
  }
  if (status === 200 || status === 206 || status === 304) {
    response.writeHead(status, headers);
    if (status === 304 || method === 'HEAD') {
      answer.resume();
      response.end();
      return 0;
    }
    let sent = 0;
    answer.on('data', (chunk: Buffer) => { sent += chunk.length; });
    try {
      await pipeline(answer, response);
    } catch {
      // S3 cut the body or the client left: never pretend the body was complete.
      response.destroy();
    }
    return sent;
  }
  const problem = s3AnswerProblem(status, method === 'HEAD' ? '' : await errorBody(answer));
  if (problem.kind === 'notFound') return answerError(response, 404, `${file}: not in this repository`);
  if (problem.kind === 'range') {
    const head = await upstream(location, file, 'HEAD', {}).catch(() => undefined);
    head?.resume();
    const size = head?.statusCode === 200 ? head.headers['content-length'] : undefined;
    return answerError(response, 416, `${file}: range not satisfiable`, size === undefined ? {} : { 'content-range': `bytes */${size}` });
  }
  return answerError(response, 502, `${file}: the S3 repository behind this server failed: ${problem.why}`);
}

/** The index of an S3 repository read with signed GETs; empty when it has none yet. */
export async function readS3Index(location: S3Location): Promise<RepositoryIndex> {
  try {
    return await fetchRepositoryFor(location, INDEX_READ).readIndex();
  } catch (error) {
    if (error instanceof Error && / has no packages\.checksum$/.test(error.message)) return new Map();
    throw error;
  }
}

/** The files an S3 repository's listing shows: those of its index, and the index files. */
export async function listS3Files(location: S3Location): Promise<string[]> {
  const index = await readS3Index(location);
  if (index.size === 0) return [];
  // packages.json is there when the index has its sha256s (an Autotest-only index has md5s alone).
  const withManifest = [...index.values()].some((entry) => entry.sha256 !== undefined);
  return [...index.keys(), 'packages.checksum', ...(withManifest ? ['packages.json'] : [])];
}
