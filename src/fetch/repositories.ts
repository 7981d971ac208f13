import { spawn, type ChildProcess } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import { rootCertificates } from 'node:tls';
import path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import tar from 'tar-stream';
import type { FetchSettings, FetchTls, Location } from '../config/index.js';
import { describeLocation } from '../config/index.js';
import { describeError, errnoCode, isAutotestError } from '../errors.js';
import {
  CHECKSUM_FILE,
  MANIFEST_FILE,
  indexProblems,
  parseChecksumFile,
  readIndexFiles,
  type RepositoryIndex,
} from '../packages/index.js';
import { readLocalIndex } from '../repositories/local.js';
import { readVerifiedIndex, type IndexTrust } from '../signing/index.js';
import { s3AnswerProblem, s3Problem } from '../s3/client.js';
import { signGet } from '../s3/sign.js';
import { sshHost, whenClosed } from '../ssh/session.js';
import { classifyNetworkError, FetchFailure } from './errors.js';
import { closeWhenDone } from '../connections.js';

/** The bytes of a package from `start` on (a server that ignores ranges starts at 0). */
export interface Opened {
  stream: Readable;
  start: number;
}

/** A repository clients fetch from, one implementation per scheme. */
export interface FetchRepository {
  /** For messages: the location without secrets. */
  name: string;
  /** The index; with `trust`, only a manifest whose signature verifies is believed (see readVerifiedIndex). */
  readIndex(trust?: IndexTrust): Promise<RepositoryIndex>;
  /** The bytes of `file` from `offset` on, all of them within `timeoutMs` (what is left of fetch_timeout). */
  open(file: string, offset: number, timeoutMs: number): Promise<Opened>;
  /**
   * `file` whole with its ETag, or `unchanged` when `etag` is still its ETag (If-None-Match, a
   * 304): how the caching front revalidates an index. Only schemes with ETags (HTTP, S3) have it.
   */
  readIfChanged?(file: string, etag: string | undefined, timeoutMs: number): Promise<Revalidated>;
}

export type Revalidated = { unchanged: true } | { unchanged: false; stream: Readable; etag: string | undefined };

/** A GET answered 200 or 304 (asked with If-None-Match) as what readIfChanged gives. */
function revalidated(response: IncomingMessage): Revalidated {
  if (response.statusCode === 304) {
    response.resume();
    return { unchanged: true };
  }
  const etag = response.headers.etag;
  return { unchanged: false, stream: response, etag: typeof etag === 'string' && etag !== '' ? etag : undefined };
}

const INDEX_LIMIT = 32 * 1024 * 1024;
/** A download that moves no byte for this long is cut and tried again. */
const MAX_STALL_MS = 30_000;

function notFound(what: string): FetchFailure {
  return new FetchFailure(`${what}: not found (404)`, { transient: false, down: false, notFound: true });
}

function indexFrom(name: string, checksums: string | undefined, manifest: string | undefined): RepositoryIndex {
  if (checksums === undefined) {
    throw new FetchFailure(`${name}: has no ${CHECKSUM_FILE}`, { transient: false, down: false });
  }
  const { index } = readIndexFiles(parseChecksumFile(checksums, `${name}/${CHECKSUM_FILE}`), manifest, (file) => `${name}/${file}`);
  const problems = indexProblems(index);
  if (index.size === 0 && problems.length > 0) {
    // Not a repository that lacks the package: one that answers something else (an HTML page, junk).
    throw new FetchFailure(`${name}: its ${CHECKSUM_FILE} has no readable entry (${problems[0] ?? ''})`, { transient: false, down: false });
  }
  return index;
}

/** An index file's bytes, refused past 32 MiB: no repository index comes near it. */
export async function readIndexBody(stream: Readable, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    const buffer = chunk as Buffer;
    size += buffer.length;
    if (size > INDEX_LIMIT) throw new FetchFailure(`${what}: larger than ${INDEX_LIMIT.toString()} bytes, not an index`, { transient: false, down: false });
    chunks.push(buffer);
  }
  return Buffer.concat(chunks);
}

/** A text file of the repository, or undefined when it has none (404). */
async function optionalText(name: string, file: string, open: (file: string) => Promise<Readable>): Promise<string | undefined> {
  try {
    return (await readIndexBody(await open(file), `${name}/${file}`)).toString('utf8');
  } catch (error) {
    if (error instanceof FetchFailure && error.notFound) return undefined;
    throw error;
  }
}

/**
 * The signed manifest's entries alone (packages.checksum is not signed, so it is not read),
 * or undefined for an unsigned repository when signatures are not required.
 */
async function readTrustedIndex(name: string, read: (file: string) => Promise<string | undefined>, trust: IndexTrust): Promise<RepositoryIndex | undefined> {
  try {
    return (await readVerifiedIndex(name, read, trust))?.index;
  } catch (error) {
    if (!isAutotestError(error, 'ERR_SIGNATURE') && !isAutotestError(error, 'ERR_BAD_INDEX')) throw error;
    throw new FetchFailure(error.message, { transient: false, down: false, hint: error.hint, cause: error });
  }
}

/** Reads packages.checksum and packages.json (both at once) through `open`. */
async function readIndexThrough(name: string, open: (file: string) => Promise<Readable>, trust: IndexTrust | undefined): Promise<RepositoryIndex> {
  const trusted = trust && await readTrustedIndex(name, (file) => optionalText(name, file, open), trust);
  if (trusted) return trusted;
  const [checksums, manifest] = await Promise.all([optionalText(name, CHECKSUM_FILE, open), optionalText(name, MANIFEST_FILE, open)]);
  return indexFrom(name, checksums, manifest);
}

const httpAgent = new http.Agent({ keepAlive: true });
/** One HTTPS agent per set of TLS files (in practice one per process); '' is the system's CAs alone. */
const httpsAgents = new Map<string, https.Agent>();

function httpsAgent(tls: FetchTls | undefined): https.Agent {
  const ca = tls?.ca?.pem;
  const cert = tls?.clientCert?.pem;
  const key = tls?.clientKey?.pem;
  if ((tls?.ca && ca === undefined) || (tls?.clientCert && (cert === undefined || key === undefined))) {
    throw new Error('fetch TLS files used before readTlsFiles read them');
  }
  const id = ca === undefined && cert === undefined ? '' : JSON.stringify([ca, cert, key]);
  let agent = httpsAgents.get(id);
  if (!agent) {
    // `ca` replaces Node's list: the system's roots go in with the lab's CA so public
    // repositories (and AWS) stay trusted.
    agent = new https.Agent({
      keepAlive: true,
      ...(ca === undefined ? {} : { ca: [...rootCertificates, ca] }),
      ...(cert === undefined || key === undefined ? {} : { cert, key }),
    });
    httpsAgents.set(id, agent);
  }
  return agent;
}

/**
 * The kept-alive agent for a URL, shared by every repository read of the process (and the
 * server's S3 proxy); an https one trusts fetch_ca_file and presents fetch_client_cert.
 */
export function agentFor(url: URL, tls?: FetchTls): http.Agent {
  return url.protocol === 'https:' ? httpsAgent(tls) : httpAgent;
}

/** Closes the kept-alive connections, so a command ends as soon as its work is done. */
export function closeHttpConnections(): void {
  httpAgent.destroy();
  for (const agent of httpsAgents.values()) agent.destroy();
  httpsAgents.clear();
}

closeWhenDone(closeHttpConnections);

/** What a GET answered other than 200/206, for the scheme to turn into a FetchFailure. */
type RefusedAnswer = (status: number, body: string, what: string) => FetchFailure;

/** Plain HTTP: 404/410 not found, 416 a refused range, 5xx/429/408 transient, anything else final. */
const httpRefusal: RefusedAnswer = (status, _body, what) => {
  if (status === 404 || status === 410) return notFound(what);
  if (status === 416) return new FetchFailure(`${what}: the server refused the range asked (416)`, { transient: true, down: false, rangeRefused: true });
  if (status >= 500 || status === 429 || status === 408) return new FetchFailure(`${what}: the server answered ${status.toString()}`, { transient: true, down: false });
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

/**
 * One GET with a connect timeout, a stall timeout and, for a body, an overall deadline; the
 * response when it is 200 or 206, else the FetchFailure `refusal` makes of it.
 */
function httpGet(url: URL, offset: number, extraHeaders: Record<string, string>, what: string, settings: FetchSettings, refusal: RefusedAnswer): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const client = url.protocol === 'https:' ? https : http;
    const headers: Record<string, string> = { 'user-agent': 'autotest-client', 'accept-encoding': 'identity', ...extraHeaders };
    if (offset > 0) headers.range = `bytes=${offset.toString()}-`;
    const request = client.get(url, { headers, agent: agentFor(url, settings.tls) });
    const connectTimer = setTimeout(() => {
      request.destroy(new FetchFailure(`${what}: no connection within ${(settings.connectTimeoutMs / 1000).toString()} s`, { transient: false, down: true, timedOut: true }));
    }, settings.connectTimeoutMs);
    const deadline = setTimeout(() => {
      request.destroy(new FetchFailure(`${what}: not complete within ${(settings.timeoutMs / 1000).toString()} s (fetch_timeout)`, { transient: true, down: true, timedOut: true }));
    }, settings.timeoutMs);
    request.on('socket', (socket) => {
      // A kept-alive socket is connected already; only a new one gets a listener.
      if (!socket.connecting) clearTimeout(connectTimer);
      else socket.once('connect', () => { clearTimeout(connectTimer); });
    });
    request.setTimeout(Math.min(MAX_STALL_MS, settings.timeoutMs), () => {
      request.destroy(new FetchFailure(`${what}: no data for ${(Math.min(MAX_STALL_MS, settings.timeoutMs) / 1000).toString()} s`, { transient: true, down: true, timedOut: true }));
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
      void errorBody(response).then((body) => { reject(refusal(status, body, what)); });
    });
  });
}

/** A 200 or 206 answer as the bytes from `offset` on (a server that ignores ranges starts at 0). */
function openedFrom(response: IncomingMessage, offset: number, what: string): Opened {
  if (response.statusCode === 206) {
    const range = /^bytes (\d+)-/.exec(response.headers['content-range'] ?? '');
    if (!range || Number(range[1]) !== offset) {
      response.destroy();
      throw new FetchFailure(`${what}: the server sent another range than asked (${response.headers['content-range'] ?? 'none'})`, { transient: true, down: false });
    }
    return { stream: response, start: offset };
  }
  return { stream: response, start: 0 };
}

/** nginx and Apache answer 400 or 403 over a finished handshake when a client certificate is missing or not trusted. */
const httpsRefusal: RefusedAnswer = (status, body, what) => {
  const failure = httpRefusal(status, body, what);
  if (status !== 400 && status !== 403) return failure;
  return new FetchFailure(failure.message, { transient: false, down: false, hint: 'if the server verifies client certificates, set fetch_client_cert and fetch_client_key ([PACKAGES])' });
};

function httpRepository(location: Extract<Location, { kind: 'http' }>, settings: FetchSettings): FetchRepository {
  const name = describeLocation(location);
  const refusal = location.url.startsWith('https:') ? httpsRefusal : httpRefusal;
  const get = (file: string, offset: number, timeoutMs = settings.timeoutMs, conditions: Record<string, string> = {}): Promise<IncomingMessage> =>
    httpGet(new URL(`${location.url}/${encodeURIComponent(file)}`), offset, conditions, `${name}/${file}`, { ...settings, timeoutMs }, refusal);
  return {
    name,
    readIndex: (trust) => readIndexThrough(name, (file) => get(file, 0), trust),
    async open(file, offset, timeoutMs) {
      return openedFrom(await get(file, offset, timeoutMs), offset, `${name}/${file}`);
    },
    readIfChanged: async (file, etag, timeoutMs) => revalidated(await get(file, 0, timeoutMs, etag === undefined ? {} : { 'if-none-match': etag })),
  };
}

/** Ends `output` with an error when the process behind it fails. */
function watchProcess(child: ChildProcess, output: PassThrough, what: string, settings: FetchSettings, endOnSuccess = false): void {
  const { timeoutMs } = settings;
  const started = performance.now();
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    if (stderr.length < 4096) stderr += chunk;
  });
  const timer = setTimeout(() => {
    child.kill('SIGKILL');
    output.destroy(new FetchFailure(`${what}: not complete within ${(timeoutMs / 1000).toString()} s (fetch_timeout)`, { transient: true, down: true, timedOut: true }));
  }, timeoutMs);
  output.on('close', () => {
    clearTimeout(timer);
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  child.on('error', (error) => output.destroy(classifyNetworkError(error, what)));
  void whenClosed(child).then(({ code }) => {
    clearTimeout(timer);
    if (code === 0) {
      if (endOnSuccess) output.end();
      return;
    }
    const why = stderr.trim();
    if (code === 255) {
      // ssh exits 255 for a refused connection, a refused key and a timeout alike; only the
      // time it took tells the slow failure (cool-down) from the instant ones, without
      // reading its words.
      const slow = performance.now() - started >= settings.connectTimeoutMs;
      output.destroy(new FetchFailure(`${what}: cannot connect${why ? `: ${why}` : ''}`, { transient: false, down: slow }));
    }
    else if (/No such file|did not match any files|not found/i.test(why)) output.destroy(notFound(what));
    else output.destroy(new FetchFailure(`${what}: ${why || `exit code ${String(code)}`}`, { transient: true, down: false }));
  });
}

function sshRepository(location: Extract<Location, { kind: 'ssh' }>, settings: FetchSettings): FetchRepository {
  const name = describeLocation(location);
  const host = sshHost(location);
  const inDir = (file: string): string => path.posix.join(location.path, file);
  const stream = (file: string, offset: number, timeoutMs = settings.timeoutMs): Readable => {
    // tail -c +N starts at byte N (1-based): the resume point.
    const out = new PassThrough();
    const what = `${name}/${file}`;
    const started = performance.now();
    host.spawn(['tail', '-c', `+${(offset + 1).toString()}`, '--', inDir(file)], timeoutMs).then((child) => {
      // Given up on while ssh was logging in (the budget ran out): nobody reads this any more.
      if (out.destroyed) {
        child.kill('SIGKILL');
        return;
      }
      child.stdin?.end();
      // Ended by watchProcess only once ssh exits 0: a missing file or a dropped connection
      // is an error, never a short or empty file.
      child.stdout?.pipe(out, { end: false });
      watchProcess(child, out, what, { ...settings, timeoutMs }, true);
    }, (error: unknown) => {
      // The command never started: ssh could not connect or log in, or the account's start-up
      // files stopped it. As in watchProcess, only the time it took tells a slow failure.
      const slow = performance.now() - started >= settings.connectTimeoutMs;
      out.destroy(new FetchFailure(`${what}: ${describeError(error)}`, { transient: false, down: slow, cause: error }));
    });
    return out;
  };
  return {
    name,
    readIndex: (trust) => readIndexThrough(name, (file) => Promise.resolve(stream(file, 0)), trust),
    open: (file, offset, timeoutMs) => Promise.resolve({ stream: stream(file, offset, timeoutMs), start: offset }),
  };
}

function localRepository(location: Extract<Location, { kind: 'local' }>): FetchRepository {
  const name = location.path;
  return {
    name,
    async readIndex(trust) {
      const readText = async (file: string): Promise<string | undefined> => {
        try {
          return await readFile(path.join(location.path, file), 'utf8');
        } catch (error) {
          if (errnoCode(error) === 'ENOENT') return undefined;
          throw new FetchFailure(`${name}: cannot read ${file} (${errnoCode(error) ?? String(error)})`, { transient: false, down: false, cause: error });
        }
      };
      const trusted = trust && await readTrustedIndex(name, readText, trust);
      if (trusted) return trusted;
      const index = await readLocalIndex(location.path).catch((error: unknown) => {
        throw new FetchFailure(`${name}: cannot read its index (${errnoCode(error) ?? String(error)})`, { transient: false, down: false, cause: error });
      });
      if (index.size === 0) throw new FetchFailure(`${name}: has no ${CHECKSUM_FILE}`, { transient: false, down: false });
      return index;
    },
    open(file, offset) {
      const stream = createReadStream(path.join(location.path, file), { start: offset });
      return new Promise((resolve, reject) => {
        stream.once('open', () => { resolve({ stream, start: offset }); });
        stream.once('error', (error) => {
          reject(errnoCode(error) === 'ENOENT' ? notFound(`${name}/${file}`) : classifyNetworkError(error, `${name}/${file}`));
        });
      });
    },
  };
}

function gitRepository(location: Extract<Location, { kind: 'git' }>, settings: FetchSettings): FetchRepository {
  const name = describeLocation(location);
  const ref = location.branch ?? 'HEAD';
  /** `git archive --remote` answers with a tar holding the one file; its body is the package. */
  const stream = (file: string, timeoutMs = settings.timeoutMs): Promise<Readable> => new Promise((resolve, reject) => {
    const what = `${name}/${file}`;
    const child = spawn('git', ['archive', `--remote=${location.url}`, ref, '--', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    const extract = tar.extract();
    const out = new PassThrough();
    watchProcess(child, out, what, { ...settings, timeoutMs });
    out.once('error', reject);
    child.stdout.pipe(extract);
    let found = false;
    extract.on('entry', (header, body, next) => {
      if (header.name !== file || header.type !== 'file' || found) {
        body.resume();
        body.on('end', next);
        return;
      }
      found = true;
      resolve(out);
      body.on('data', (chunk: unknown) => {
        if (!out.write(chunk)) {
          body.pause();
          out.once('drain', () => body.resume());
        }
      });
      body.on('end', next);
    });
    extract.on('finish', () => {
      if (found) out.end();
      else out.destroy(notFound(what));
    });
    extract.on('error', (error) => out.destroy(new FetchFailure(`${what}: git sent a bad archive (${error.message})`, { transient: true, down: false })));
  });
  return {
    name,
    readIndex: (trust) => readIndexThrough(name, (file) => stream(file), trust),
    // git archive cannot start in the middle: every try starts at 0.
    open: async (file, _offset, timeoutMs) => ({ stream: await stream(file, timeoutMs), start: 0 }),
  };
}

/**
 * An S3 error answer as a FetchFailure: the code of its XML document (NoSuchKey, NoSuchBucket,
 * AccessDenied, SignatureDoesNotMatch...) says whether the next repository should be tried
 * and the repository cooled down.
 */
const s3Refusal: RefusedAnswer = (status, body, what) => {
  const problem = s3AnswerProblem(status, body);
  const failure = (transient: boolean, down: boolean, extra: { notFound?: boolean; rangeRefused?: boolean } = {}): FetchFailure =>
    new FetchFailure(`${what}: ${problem.why}`, { transient, down, ...extra });
  switch (problem.kind) {
    case 'notFound': return failure(false, false, { notFound: true });
    case 'range': return failure(true, false, { rangeRefused: true });
    // Answers, so they came back at once: the next repository, but no cool-down.
    case 'denied': case 'noBucket': case 'noCredentials': return failure(false, false);
    case 'unreachable': return failure(false, true);
    case 'transient': return failure(true, false);
    default: return failure(false, false);
  }
};

/**
 * An S3 prefix read with signed GETs (SigV4, the SDK's signer and credential chain) over the
 * same HTTP code as the other repositories: keep-alive, timeouts, Range from the resume point.
 */
function s3Repository(location: Extract<Location, { kind: 's3' }>, settings: FetchSettings): FetchRepository {
  const name = describeLocation(location);
  const get = async (file: string, offset: number, timeoutMs = settings.timeoutMs, conditions: Record<string, string> = {}): Promise<IncomingMessage> => {
    const what = `${name}/${file}`;
    let signed;
    try {
      signed = await signGet(location, file);
    } catch (error) {
      // No credentials found: a setting to fix, not a server to wait for.
      throw new FetchFailure(`${what}: ${s3Problem(error).why}`, { transient: false, down: false, cause: error });
    }
    // If-None-Match is not among the signed headers: S3 takes it unsigned.
    return httpGet(signed.url, offset, { ...signed.headers, ...conditions }, what, { ...settings, timeoutMs }, s3Refusal);
  };
  return {
    name,
    readIndex: (trust) => readIndexThrough(name, (file) => get(file, 0), trust),
    async open(file, offset, timeoutMs) {
      return openedFrom(await get(file, offset, timeoutMs), offset, `${name}/${file}`);
    },
    readIfChanged: async (file, etag, timeoutMs) => revalidated(await get(file, 0, timeoutMs, etag === undefined ? {} : { 'if-none-match': etag })),
  };
}

export function fetchRepositoryFor(location: Location, settings: FetchSettings): FetchRepository {
  switch (location.kind) {
    case 's3':
      return s3Repository(location, settings);
    case 'http':
      return httpRepository(location, settings);
    case 'ssh':
      return sshRepository(location, settings);
    case 'local':
      return localRepository(location);
    case 'git':
      return gitRepository(location, settings);
  }
}
