/**
 * The caching front on its own: its upstreams are in-memory FetchRepository doubles, time is a
 * clock the test moves, and each request is answered into an in-memory socket, so the index
 * revalidation, the coalescing of downloads, cool-downs and the answer codes are checked
 * without a server and without waiting.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile, readdir } from 'node:fs/promises';
import { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import path from 'node:path';
import { Duplex, PassThrough, Readable } from 'node:stream';
import { test, type TestContext } from 'node:test';
import { pino } from 'pino';
import type { FetchSettings, Location } from '../src/config/index.js';
import { FetchFailure } from '../src/fetch/index.js';
import { CHECKSUM_FILE, MANIFEST_FILE, formatChecksumFile, formatManifest, type IndexEntry, type RepositoryIndex } from '../src/packages/index.js';
import { notFound } from '../src/repositories/read-index.js';
import type { FetchRepository, Opened, Revalidated } from '../src/repositories/types.js';
import { Resources } from '../src/resources.js';
import { createCacheFront, type CachedRepository, type CacheFront } from '../src/server/cache.js';
import { openCacheStore } from '../src/server/cache-store.js';
import { createMetrics } from '../src/server/metrics.js';
import { tempDir } from './helpers.js';

const FILE = 'test-dbench.tar.bz2';
const BODY = Buffer.from('the bytes of test-dbench, as published\n'.repeat(512));
const SETTINGS: FetchSettings = { connectTimeoutMs: 1000, timeoutMs: 2000, retries: 0, cooldownMs: 0, maxSizeBytes: 1e9 };

function entryOf(file: string, body: Buffer): IndexEntry {
  return { file, md5: createHash('md5').update(body).digest('hex'), sha256: createHash('sha256').update(body).digest('hex'), size: body.length };
}

/** Who was asked for what, in order, across every upstream double of a test. */
type Log = { upstream: string; file: string }[];

/**
 * An in-memory upstream: its packages, and an index of them (packages.checksum and
 * packages.json) made from what it holds when asked. A package in `lost` is named by the
 * index but its bytes are gone; `failWith` makes every open fail; `hold` makes the next open
 * of a package stop after its first half until released.
 */
class MemoryUpstream implements FetchRepository {
  readonly packages = new Map<string, Buffer>();
  readonly lost = new Set<string>();
  failWith: ((what: string) => Error) | undefined;
  /** Hears the time limit of each open before failWith fails it (a stalled upstream takes it all); the open waits for what it returns. */
  onOpen: ((timeoutMs: number) => Promise<void> | undefined) | undefined;
  private readonly held = new Map<string, Promise<void>>();

  constructor(
    readonly name: string,
    private readonly log: Log,
  ) {}

  readIndex(): Promise<RepositoryIndex> {
    return Promise.resolve(new Map([...this.packages].map(([file, body]) => [file, entryOf(file, body)])));
  }

  async open(file: string, offset: number, timeoutMs: number): Promise<Opened> {
    this.log.push({ upstream: this.name, file });
    const what = `${this.name}/${file}`;
    await this.onOpen?.(timeoutMs);
    if (this.failWith) throw this.failWith(what);
    const index = await this.readIndex();
    const body =
      file === CHECKSUM_FILE ? Buffer.from(formatChecksumFile(index)) : file === MANIFEST_FILE ? Buffer.from(formatManifest(index)) : this.packages.get(file);
    if (!body || this.lost.has(file)) throw notFound(what);
    const gate = this.held.get(file);
    if (!gate) return { stream: Readable.from([body.subarray(offset)]), start: offset };
    this.held.delete(file);
    const stream = new PassThrough();
    const half = Math.floor(body.length / 2);
    stream.write(body.subarray(offset, half));
    void gate.then(() => stream.end(body.subarray(half)));
    return { stream, start: offset };
  }

  /** The next open of `file` sends its first half, and the rest once the returned function is called. */
  hold(file: string): () => void {
    let release = (): void => undefined;
    this.held.set(
      file,
      new Promise((resolve) => {
        release = resolve;
      }),
    );
    return () => {
      release();
    };
  }
}

/**
 * An upstream that revalidates as nginx does: its ETag is the file's mtime in seconds and its
 * size, so an index rewritten within the same second at the same size keeps its ETag.
 */
class SameSecondUpstream extends MemoryUpstream {
  async readIfChanged(file: string, etag: string | undefined, timeoutMs: number): Promise<Revalidated> {
    const opened = await this.open(file, 0, timeoutMs);
    const chunks: Buffer[] = [];
    for await (const chunk of opened.stream) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    const now = `"6565a4c0-${body.length.toString(16)}"`;
    return now === etag ? { unchanged: true } : { unchanged: false, stream: Readable.from([body]), etag: now };
  }
}

/** A clock the test moves; pauses between tries are noted and pass at once. */
function testClock(): { now: () => number; advance: (ms: number) => void; sleep: (ms: number) => Promise<void>; random: () => number; pauses: number[] } {
  let time = 1_700_000_000_000;
  const pauses: number[] = [];
  return {
    now: () => time,
    advance: (ms) => {
      time += ms;
    },
    sleep: (ms) => {
      pauses.push(ms);
      time += ms;
      return Promise.resolve();
    },
    random: () => 0.5,
    pauses,
  };
}

interface Lab {
  front: CacheFront;
  /** The store's folder. */
  cacheDir: string;
  upstreams: Map<string, MemoryUpstream>;
  log: Log;
  clock: ReturnType<typeof testClock>;
  /** A served repository over the upstreams, in the order named. */
  served: (names: string[], indexMaxAgeMs?: number) => CachedRepository;
}

/** A front over upstream doubles named `names`, each holding FILE. */
async function lab(
  t: TestContext,
  names: string[],
  settings: Partial<FetchSettings> = {},
  Upstream: new (name: string, log: Log) => MemoryUpstream = MemoryUpstream,
): Promise<Lab> {
  const dir = await tempDir(t, 'autotest-cache-front-');
  const log: Log = [];
  const clock = testClock();
  const metrics = createMetrics().cache;
  const logger = pino({ level: 'silent' });
  const upstreams = new Map(names.map((name) => [name, new Upstream(name, log)]));
  for (const upstream of upstreams.values()) upstream.packages.set(FILE, BODY);
  const resources = new Resources();
  const front = createCacheFront({
    store: await openCacheStore({ dir: path.join(dir, 'cache'), sizeBytes: 1e9, metrics, log: logger }),
    settings: { ...SETTINGS, ...settings },
    metrics,
    log: logger,
    resources,
    repositoryFor: (location) => upstreams.get(location.text) ?? assert.fail(`no double for ${location.text}`),
    now: clock.now,
    sleep: clock.sleep,
    random: clock.random,
  });
  t.after(async () => {
    front.close();
    await resources.close();
  });
  const served = (order: string[], indexMaxAgeMs = 60_000): CachedRepository => {
    const locations: Location[] = order.map((name) => ({ kind: 'http', url: `http://${name}.lab/packages`, text: name }));
    return front.repository('builtin', locations, indexMaxAgeMs);
  };
  return { front, cacheDir: path.join(dir, 'cache'), upstreams, log, clock, served };
}

/** How a request was answered: its status, headers and body, and whether the body ended whole. */
interface Answered {
  status: number;
  headers: Map<string, string>;
  body: Buffer;
  whole: boolean;
}

/** The bytes a response wrote to its socket, read back as an HTTP answer. */
function parseAnswer(raw: Buffer, whole: boolean): Answered {
  const end = raw.indexOf('\r\n\r\n');
  const [statusLine = '', ...lines] = raw.subarray(0, end).toString('latin1').split('\r\n');
  const headers = new Map(lines.map((line) => [line.slice(0, line.indexOf(':')).toLowerCase(), line.slice(line.indexOf(':') + 1).trim()]));
  let body = raw.subarray(end + 4);
  if (headers.get('transfer-encoding') === 'chunked') {
    const parts: Buffer[] = [];
    for (let at = 0; at < body.length;) {
      const lineEnd = body.indexOf('\r\n', at);
      const size = Number.parseInt(body.subarray(at, lineEnd).toString('latin1'), 16);
      parts.push(body.subarray(lineEnd + 2, lineEnd + 2 + size));
      at = lineEnd + 2 + size + 2;
    }
    body = Buffer.concat(parts);
  }
  return { status: Number(statusLine.split(' ')[1]), headers, body, whole };
}

/** Asks `repository` for `file` as the server would, answering into an in-memory socket; an entry of the store is read as the server sends it. */
async function ask(repository: CachedRepository, file: string): Promise<Answered> {
  const written: Buffer[] = [];
  // Without a server nothing passes the socket's 'drain' on to the response: the socket takes every write at once.
  const socket = new Duplex({
    writableHighWaterMark: 1 << 30,
    read() {
      /* the client sends nothing more */
    },
    write(chunk: Buffer, _encoding, done) {
      written.push(chunk);
      done();
    },
  });
  const request = new IncomingMessage(socket as unknown as Socket);
  request.method = 'GET';
  const response = new ServerResponse(request);
  response.assignSocket(socket as unknown as Socket);
  const ended = new Promise<void>((resolve) => {
    response.once('finish', resolve);
    response.once('close', resolve);
  });
  const answer = await repository.answer(request, response, file, 'application/octet-stream');
  if (answer.kind === 'entry') {
    const body = await readFile(answer.path);
    answer.release();
    return { status: 200, headers: new Map([['x-autotest-cache', String(response.getHeader('x-autotest-cache'))]]), body, whole: true };
  }
  await ended;
  return parseAnswer(Buffer.concat(written), response.writableFinished);
}

function opensOf(log: Log, upstream: string, file: string): number {
  return log.filter((asked) => asked.upstream === upstream && asked.file === file).length;
}

async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setImmediate(resolve));
}

const slowFailure = (what: string): Error => new FetchFailure(`${what}: no connection within 1 s`, { transient: false, down: true });
const timedOut = (what: string): Error => new FetchFailure(`${what}: nothing within 2 s (fetch_timeout)`, { transient: true, down: true, timedOut: true });

test('reuses an upstream index until index_max_age has passed, then revalidates it', async (t) => {
  const { upstreams, log, clock, served } = await lab(t, ['mirror']);
  const repository = served(['mirror'], 60_000);
  assert.deepEqual([...(await repository.readIndex()).keys()], [FILE]);
  upstreams.get('mirror')?.packages.set('test-sleeptest.tar.bz2', Buffer.from('sleeptest'));

  clock.advance(59_999);
  assert.deepEqual([...(await repository.readIndex()).keys()], [FILE], 'the index read a moment ago is reused');
  assert.equal(opensOf(log, 'mirror', CHECKSUM_FILE), 1);

  clock.advance(1);
  assert.deepEqual(
    [...(await repository.readIndex()).keys()].sort(),
    [FILE, 'test-sleeptest.tar.bz2'],
    'once index_max_age has passed, the new publish is seen',
  );
  assert.equal(opensOf(log, 'mirror', CHECKSUM_FILE), 2);
});

test('serves a package many clients ask for at once from one upstream download', async (t) => {
  const { upstreams, log, served } = await lab(t, ['mirror']);
  const repository = served(['mirror']);
  const release = upstreams.get('mirror')?.hold(FILE) ?? assert.fail('no mirror');
  const answers = Array.from({ length: 20 }, () => ask(repository, FILE));
  await until(() => repository.stats().misses + repository.stats().coalesced === answers.length);
  assert.equal(repository.stats().coalesced, 19, 'every client after the first joins the download under way');
  release();
  for (const answer of await Promise.all(answers)) {
    assert.equal(answer.status, 200);
    assert.ok(answer.whole);
    assert.deepEqual(answer.body, BODY);
  }
  assert.equal(opensOf(log, 'mirror', FILE), 1, 'one upstream download for twenty clients');

  const later = await ask(repository, FILE);
  assert.equal(later.headers.get('x-autotest-cache'), 'hit');
  assert.deepEqual(later.body, BODY);
  assert.equal(opensOf(log, 'mirror', FILE), 1, 'a later client is answered from the store');
  assert.deepEqual({ ...repository.stats() }, { hits: 1, misses: 1, coalesced: 19, passedThrough: 0, entries: 1, bytes: BODY.length, stale: false });
});

test('skips an upstream in cool-down until its time is up', async (t) => {
  const { upstreams, log, clock, served } = await lab(t, ['near', 'far'], { cooldownMs: 60_000 });
  const near = upstreams.get('near') ?? assert.fail('no near');
  near.failWith = slowFailure;
  const repository = served(['near', 'far']);
  const readAgain = async (): Promise<void> => {
    repository.invalidate();
    assert.deepEqual([...(await repository.readIndex()).keys()], [FILE], 'far answers in its place');
  };
  await readAgain();
  assert.equal(opensOf(log, 'near', CHECKSUM_FILE), 1);

  await readAgain();
  clock.advance(59_999);
  await readAgain();
  assert.equal(opensOf(log, 'near', CHECKSUM_FILE), 1, 'near is not asked while it cools down');
  assert.equal(opensOf(log, 'far', CHECKSUM_FILE), 3);

  clock.advance(1);
  near.failWith = undefined;
  await readAgain();
  assert.equal(opensOf(log, 'near', CHECKSUM_FILE), 2, 'once its time is up near is asked again');
  assert.equal(opensOf(log, 'far', CHECKSUM_FILE), 3, 'and far is no longer needed');
});

test('answers 404 when no upstream has the package and 504 when every upstream timed out', async (t) => {
  const { upstreams, log, clock, served } = await lab(t, ['near', 'far'], { retries: 1 });
  const repository = served(['near', 'far']);
  for (const upstream of upstreams.values()) upstream.lost.add(FILE);

  const missing = await ask(repository, FILE);
  assert.equal(missing.status, 404);
  assert.match(missing.body.toString(), /"error":"ERR_NOT_FOUND"/);
  assert.match(missing.body.toString(), /near\/test-dbench\.tar\.bz2: not found \(404\).*far\/test-dbench\.tar\.bz2: not found \(404\)/);
  assert.deepEqual(clock.pauses, [], 'a 404 is never tried again');

  for (const upstream of upstreams.values()) upstream.failWith = timedOut;
  const slow = await ask(repository, FILE);
  assert.equal(slow.status, 504);
  assert.match(slow.body.toString(), /"error":"ERR_TIMEOUT"/);
  assert.equal(opensOf(log, 'near', FILE), 3, 'near: once for the 404, then a try and a retry');
  assert.equal(opensOf(log, 'far', FILE), 3);
  assert.deepEqual(clock.pauses, [200, 200], 'a backoff pause before each retry');
});

test('gives an upstream that times out on every try fetch_timeout in all, its retries and pauses included', async (t) => {
  const { upstreams, clock, served } = await lab(t, ['mirror'], { retries: 3, timeoutMs: 2000 });
  const mirror = upstreams.get('mirror') ?? assert.fail('no mirror');
  const repository = served(['mirror']);
  await repository.readIndex();
  const started = clock.now();
  // Each try stalls for all the time it is given, as an upstream that never answers does.
  mirror.onOpen = (timeoutMs) => {
    clock.advance(timeoutMs);
    return undefined;
  };
  mirror.failWith = timedOut;
  const slow = await ask(repository, FILE);
  assert.equal(slow.status, 504);
  assert.match(slow.body.toString(), /"error":"ERR_TIMEOUT"/);
  assert.ok(clock.now() - started <= 2000, `answered after ${(clock.now() - started).toString()} ms of a 2000 ms fetch_timeout`);
});

test('a download whose upstream answers only after the front closed is cut there, keeps nothing and leaves no temp file', async (t) => {
  const { front, cacheDir, upstreams, served } = await lab(t, ['mirror']);
  const mirror = upstreams.get('mirror') ?? assert.fail('no mirror');
  const repository = served(['mirror']);
  await repository.readIndex();
  let answerNow = (): void => undefined;
  const answering = new Promise<void>((resolve) => {
    answerNow = resolve;
  });
  let opening = false;
  mirror.onOpen = () => {
    opening = true;
    return answering;
  };
  const answer = ask(repository, FILE);
  await until(() => opening);
  front.close();
  answerNow();
  const answered = await answer;
  assert.ok(!(answered.status === 200 && answered.whole), 'the client is not answered as if the server went on');
  assert.equal(repository.stats().entries, 0, 'nothing was fetched into the store after close');
  // The temp file goes just after the answers hear of the end.
  const temps = async (): Promise<string[]> => (await readdir(path.join(cacheDir, 'content'))).filter((name) => !/^(sha256|md5)-/.test(name));
  for (let look = 0; look < 100 && (await temps()).length > 0; look += 1) await new Promise((resolve) => setTimeout(resolve, 10));
  assert.deepEqual(await temps(), []);
});

test('a download that could not even list its upstreams fails alone: the next request starts its own instead of waiting on it', async (t) => {
  const { upstreams, served } = await lab(t, ['mirror', 'other']);
  const other = upstreams.get('other') ?? assert.fail('no other');
  const repository = served(['mirror', 'other']);
  await repository.readIndex();
  const readIndex = other.readIndex.bind(other);
  other.readIndex = () => {
    other.readIndex = readIndex;
    throw new Error('the other upstream cannot be asked (a broken setting)');
  };
  await ask(repository, FILE).catch(() => undefined);
  const second = ask(repository, FILE);
  await until(() => repository.stats().misses + repository.stats().coalesced === 2);
  assert.equal(repository.stats().coalesced, 0, 'the second request did not join the download that never started');
  const answered = await second;
  assert.equal(answered.status, 200);
  assert.deepEqual(answered.body, BODY);
});

test('samples its traffic on the clock it is given', async (t) => {
  const { front, clock, served } = await lab(t, ['mirror']);
  const started = clock.now();
  await ask(served(['mirror']), FILE);
  clock.advance(90_000);
  const samples = await front.traffic();
  assert.deepEqual(
    samples.map((sample) => sample.at),
    [started, started + 90_000],
  );
  assert.equal(samples.at(-1)?.upstream, BODY.length);
});

test('after a publish through this server, the index is read whole, not revalidated: nginx keeps the ETag of an index rewritten in the same second at the same size', async (t) => {
  const { upstreams, served } = await lab(t, ['mirror'], {}, SameSecondUpstream);
  const repository = served(['mirror'], 60_000);
  assert.equal((await repository.readIndex()).get(FILE)?.md5, entryOf(FILE, BODY).md5);
  // Republished with other bytes of the same length: packages.checksum keeps its size, and so its ETag.
  const republished = Buffer.from(BODY.toString('utf8').replace('the bytes', 'THE BYTES'));
  assert.equal(republished.length, BODY.length);
  upstreams.get('mirror')?.packages.set(FILE, republished);
  repository.invalidate();
  assert.equal((await repository.readIndex()).get(FILE)?.md5, entryOf(FILE, republished).md5, 'the new index is served, not the one the ETag still names');
});
