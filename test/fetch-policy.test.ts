/**
 * The fetch policy on its own: repositories are in-memory FetchRepository doubles and time is
 * a clock the test moves, so order, retries, cool-down, resume and verification are checked
 * without a server, without root and without waiting.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile, readdir, writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { test, type TestContext } from 'node:test';
import { memberKey, type FetchLocation, type FetchSettings, type Location } from '../src/config/index.js';
import { isAutotestError } from '../src/errors.js';
import { FetchFailure, PackageFetcher, rankMembers, type FetcherOptions } from '../src/fetch/index.js';
import { classifyNetworkError } from '../src/repositories/read-failure.js';
import type { IndexEntry, RepositoryIndex } from '../src/packages/index.js';
import { notFound } from '../src/repositories/read-index.js';
import type { FetchRepository, Opened } from '../src/repositories/types.js';
import { tempDir } from './helpers.js';

const FILE = 'test-dbench.tar.bz2';
const BODY = Buffer.from('the bytes of test-dbench, as published\n'.repeat(64));
const SETTINGS: FetchSettings = { connectTimeoutMs: 1000, timeoutMs: 2000, retries: 0, cooldownMs: 0, maxSizeBytes: 1e9 };

function entryOf(file: string, body: Buffer): IndexEntry {
  return { file, md5: createHash('md5').update(body).digest('hex'), sha256: createHash('sha256').update(body).digest('hex'), size: body.length };
}

/** What a repository double does when a file is opened: serve its bytes, or something else. */
type Answer =
  | { kind: 'serve' }
  | { kind: 'fail'; error: (what: string) => Error }
  /** Sends the first `bytes` from the offset asked, then the connection breaks (ECONNRESET). */
  | { kind: 'cut'; bytes: number }
  /** Sends `body` in place of the file's bytes. */
  | { kind: 'send'; body: Buffer }
  /** Sends nothing and never ends; `onOpen` runs once it is opened. */
  | { kind: 'stall'; onOpen: () => void };

/** Who was asked for what, in order, across every repository double of a test. */
type Log = { repository: string; file: string; offset: number }[];

/**
 * An in-memory FetchRepository: an index of `files`, and `answers` taken in turn by open()
 * (the last one repeats).
 */
class MemoryRepository implements FetchRepository {
  private turn = 0;

  constructor(
    readonly name: string,
    private readonly files: Map<string, Buffer>,
    private readonly answers: Answer[],
    private readonly log: Log,
  ) {}

  readIndex(): Promise<RepositoryIndex> {
    return Promise.resolve(new Map([...this.files].map(([file, body]) => [file, entryOf(file, body)])));
  }

  open(file: string, offset: number): Promise<Opened> {
    this.log.push({ repository: this.name, file, offset });
    const answer = this.answers[Math.min(this.turn, this.answers.length - 1)] ?? { kind: 'serve' };
    this.turn += 1;
    const body = this.files.get(file) ?? Buffer.alloc(0);
    const what = `${this.name}/${file}`;
    switch (answer.kind) {
      case 'serve':
        return Promise.resolve({ stream: Readable.from([body.subarray(offset)]), start: offset });
      case 'send':
        return Promise.resolve({ stream: Readable.from([answer.body]), start: 0 });
      case 'fail':
        return Promise.reject(answer.error(what));
      case 'cut':
        return Promise.resolve({ stream: cutStream(body.subarray(offset, offset + answer.bytes), what), start: offset });
      case 'stall':
        setImmediate(answer.onOpen);
        return Promise.resolve({ stream: new PassThrough(), start: offset });
    }
  }
}

/** `bytes`, then a broken connection. */
function cutStream(bytes: Buffer, what: string): Readable {
  const stream = new PassThrough();
  stream.write(bytes);
  setImmediate(() => {
    stream.destroy(classifyNetworkError(Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }), what));
  });
  return stream;
}

/** A clock that moves only when the fetcher pauses (a sleep without a signal) or the test moves it. */
function fakeClock(): Required<Pick<FetcherOptions, 'now' | 'sleep' | 'random'>> & { pauses: number[]; advance: (ms: number) => void; chance: number } {
  let time = 1_700_000_000_000;
  const timers = new Set<{ due: number; resolve: () => void }>();
  const pauses: number[] = [];
  const advance = (ms: number): void => {
    time += ms;
    for (const timer of [...timers].filter((t) => t.due <= time)) {
      timers.delete(timer);
      timer.resolve();
    }
  };
  const clock = {
    pauses,
    advance,
    /** What random() answers. */
    chance: 0.5,
    now: () => time,
    sleep: (ms: number, signal?: AbortSignal): Promise<void> => {
      if (!signal) {
        pauses.push(ms);
        advance(ms);
        return Promise.resolve();
      }
      return new Promise<void>((resolve, reject) => {
        const timer = { due: time + ms, resolve };
        timers.add(timer);
        signal.addEventListener(
          'abort',
          () => {
            timers.delete(timer);
            reject(new Error('aborted'));
          },
          { once: true },
        );
      });
    },
    random: () => clock.chance,
  };
  return clock;
}

interface Lab {
  dir: string;
  log: Log;
  clock: ReturnType<typeof fakeClock>;
  locations: Location[];
  /** A fetcher over the repository doubles, each location answered by the double of its name. */
  fetcher: (settings?: Partial<FetchSettings>, fetchLocations?: FetchLocation[]) => Promise<PackageFetcher>;
}

/** Repository doubles named after `specs`' keys, each holding FILE (and OTHER files) and answering as its list says. */
async function lab(t: TestContext, specs: Record<string, Answer[]>, files: Map<string, Buffer> = new Map([[FILE, BODY]])): Promise<Lab> {
  const dir = await tempDir(t, 'autotest-fetch-policy-');
  const log: Log = [];
  const clock = fakeClock();
  const locations: Location[] = Object.keys(specs).map((name) => ({ kind: 'http', url: `http://${name}.lab/packages`, text: name }));
  const repositories = new Map(Object.entries(specs).map(([name, answers]) => [name, new MemoryRepository(name, files, answers, log)]));
  const fetcher = async (settings: Partial<FetchSettings> = {}, fetchLocations: FetchLocation[] = locations): Promise<PackageFetcher> => {
    const created = await PackageFetcher.create(
      fetchLocations,
      { ...SETTINGS, ...settings },
      {
        stateDir: path.join(dir, 'cache'),
        repositoryFor: (location) => repositories.get(location.text) ?? assert.fail(`no double for ${location.text}`),
        now: clock.now,
        sleep: clock.sleep,
        random: clock.random,
      },
    );
    t.after(() => created.close());
    return created;
  };
  return { dir, log, clock, locations, fetcher };
}

function asked(log: Log): string[] {
  return log.map((request) => request.repository);
}

const serve: Answer = { kind: 'serve' };
const slowFailure: Answer = { kind: 'fail', error: (what) => new FetchFailure(`${what}: no connection within 1 s`, { transient: false, down: true }) };
const reset: Answer = { kind: 'fail', error: (what) => classifyNetworkError(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }), what) };
const missing: Answer = { kind: 'fail', error: notFound };

test('skips a repository in cool-down until its time is up', async (t) => {
  const { dir, log, clock, fetcher } = await lab(t, { near: [slowFailure, slowFailure, serve], far: [serve] });
  const fetching = await fetcher({ cooldownMs: 60_000 });
  const first = await fetching.fetch(FILE, path.join(dir, 'out', '1'));
  assert.equal(first.repository, 'far');
  assert.deepEqual(asked(log), ['near', 'far']);

  const second = await fetching.fetch(FILE, path.join(dir, 'out', '2'));
  assert.deepEqual(asked(log), ['near', 'far', 'far'], 'near is not asked while it cools down');
  assert.match(second.passedOver.join('\n'), /^near: skipped for 60 s more \(fetch_cooldown\) after: near\/test-dbench\.tar\.bz2: no connection within 1 s/);

  clock.advance(59_000);
  await fetching.fetch(FILE, path.join(dir, 'out', '3'));
  assert.deepEqual(asked(log), ['near', 'far', 'far', 'far'], 'one second short of its time, near is still skipped');

  clock.advance(1000);
  const fourth = await fetching.fetch(FILE, path.join(dir, 'out', '4'));
  assert.deepEqual(asked(log).slice(4), ['near', 'far'], 'once its time is up near is asked again, and fails slowly again');
  assert.equal(fourth.repository, 'far');
  clock.advance(60_000);
  const fifth = await fetching.fetch(FILE, path.join(dir, 'out', '5'));
  assert.equal(fifth.repository, 'near');
  assert.deepEqual(await readFile(path.join(dir, 'out', '5')), BODY);
});

test('an instant failure starts no cool-down: the repository is asked again for the next package', async (t) => {
  const { dir, log, fetcher } = await lab(t, { near: [missing, serve], far: [serve] });
  const fetching = await fetcher({ cooldownMs: 60_000 });
  await fetching.fetch(FILE, path.join(dir, 'out', '1'));
  const second = await fetching.fetch(FILE, path.join(dir, 'out', '2'));
  assert.deepEqual(asked(log), ['near', 'far', 'near']);
  assert.equal(second.repository, 'near');
});

test('never retries a 404', async (t) => {
  const { dir, log, clock, fetcher } = await lab(t, { near: [missing], far: [serve] });
  const fetched = await (await fetcher({ retries: 3 })).fetch(FILE, path.join(dir, 'out', FILE));
  assert.equal(fetched.repository, 'far');
  assert.deepEqual(asked(log), ['near', 'far'], 'near is asked once');
  assert.deepEqual(clock.pauses, []);
  assert.match(fetched.passedOver.join('\n'), /near\/test-dbench\.tar\.bz2: not found \(404\)/);
});

test('retries a transient failure with growing pauses then moves on', async (t) => {
  const { dir, log, clock, fetcher } = await lab(t, { near: [reset], far: [serve] });
  const fetched = await (await fetcher({ retries: 2 })).fetch(FILE, path.join(dir, 'out', FILE));
  assert.deepEqual(asked(log), ['near', 'near', 'near', 'far']);
  // random() is 0.5: the pauses are 200 ms doubling, unspread.
  assert.deepEqual(clock.pauses, [200, 400]);
  assert.equal(fetched.repository, 'far');
  assert.match(fetched.passedOver.join('\n'), /near\/test-dbench\.tar\.bz2: connection broke off \(ECONNRESET\) \(after 3 tries\)/);
  assert.deepEqual(await readFile(path.join(dir, 'out', FILE)), BODY);
});

test('spreads its pauses with random(): from half the base to one and a half times it', async (t) => {
  for (const [chance, wanted] of [
    [0, [100, 200, 400]],
    [0.75, [250, 500, 1000]],
  ] as const) {
    const { dir, log, clock, fetcher } = await lab(t, { near: [reset, reset, reset, serve] });
    clock.chance = chance;
    await (await fetcher({ retries: 3, timeoutMs: 60_000 })).fetch(FILE, path.join(dir, 'out', FILE));
    assert.deepEqual(clock.pauses, wanted);
    assert.equal(log.length, 4);
  }
});

test('gives up a try that would pause past fetch_timeout, naming the budget', async (t) => {
  const { dir, log, clock, fetcher } = await lab(t, { near: [reset] });
  // Pauses of 200 and 400 ms fit in 1 s; the third, of 800, would end past it.
  const failure = await (await fetcher({ retries: 5, timeoutMs: 1000 })).fetch(FILE, path.join(dir, 'out', FILE)).then(
    () => assert.fail('fetched'),
    (error: unknown) => error,
  );
  assert.ok(isAutotestError(failure, 'ERR_ALL_REPOSITORIES_FAILED'));
  assert.match(failure.message, /near\/test-dbench\.tar\.bz2: not complete within 1 s \(fetch_timeout, 3 tries\)/);
  assert.deepEqual(clock.pauses, [200, 400]);
  assert.equal(log.length, 3);
});

test('cuts a download that stalls when fetch_timeout is spent, and cools the repository down', async (t) => {
  const settings = { timeoutMs: 2000, cooldownMs: 60_000 };
  const holder: { clock?: ReturnType<typeof fakeClock> } = {};
  const stall: Answer = {
    kind: 'stall',
    onOpen: () => {
      holder.clock?.advance(settings.timeoutMs);
    },
  };
  const { dir, log, clock, fetcher } = await lab(t, { near: [stall], far: [serve] });
  holder.clock = clock;
  const fetching = await fetcher(settings);
  const fetched = await fetching.fetch(FILE, path.join(dir, 'out', '1'));
  assert.equal(fetched.repository, 'far');
  assert.match(fetched.passedOver.join('\n'), /near\/test-dbench\.tar\.bz2: not complete within 2 s \(fetch_timeout, 1 try\)/);
  await fetching.fetch(FILE, path.join(dir, 'out', '2'));
  assert.deepEqual(asked(log), ['near', 'far', 'far'], 'a stall is slow to fail: near cools down');
});

test('resumes a cut download from the bytes already written', async (t) => {
  const half = Math.floor(BODY.length / 2);
  const { dir, log, clock, fetcher } = await lab(t, { near: [{ kind: 'cut', bytes: half }, serve] });
  const dest = path.join(dir, 'out', FILE);
  const fetched = await (await fetcher({ retries: 1 })).fetch(FILE, dest);
  assert.deepEqual(
    log.map((request) => request.offset),
    [0, half],
    'the second try asks from the first byte not written',
  );
  assert.equal(fetched.bytes, BODY.length, 'every byte moved once');
  assert.deepEqual(clock.pauses, [200]);
  assert.deepEqual(await readFile(dest), BODY);
  assert.deepEqual((await readdir(path.dirname(dest))).sort(), [FILE], 'no part file is left');
});

test('resumes the part a previous run left, and only when it was a download of the same bytes', async (t) => {
  const half = Math.floor(BODY.length / 2);
  const { dir, log, fetcher } = await lab(t, { near: [{ kind: 'cut', bytes: half }, serve] });
  const dest = path.join(dir, 'out', FILE);
  await assert.rejects((await fetcher()).fetch(FILE, dest), (error: unknown) => isAutotestError(error, 'ERR_ALL_REPOSITORIES_FAILED'));
  assert.deepEqual(await readFile(`${dest}.part`), BODY.subarray(0, half), 'the bytes received before the cut are kept');
  await (await fetcher()).fetch(FILE, dest);
  assert.deepEqual(
    log.map((request) => request.offset),
    [0, half],
  );
  assert.deepEqual(await readFile(dest), BODY);

  // A part of another version of the file is never resumed.
  await writeFile(`${dest}.part`, BODY.subarray(0, half));
  await writeFile(`${dest}.part.json`, JSON.stringify({ md5: '0'.repeat(32), sha256: null, size: null }));
  await (await fetcher()).fetch(FILE, path.join(dir, 'out', FILE));
  assert.equal(log.at(-1)?.offset, 0);
  assert.deepEqual(await readFile(dest), BODY);
});

test("refuses a body longer than the index's size", async (t) => {
  const { dir, log, fetcher } = await lab(t, { near: [{ kind: 'send', body: Buffer.concat([BODY, Buffer.from('and more')]) }] });
  const dest = path.join(dir, 'out', FILE);
  const failure = await (await fetcher({ retries: 3 })).fetch(FILE, dest).then(
    () => assert.fail('fetched'),
    (error: unknown) => error,
  );
  assert.ok(isAutotestError(failure, 'ERR_ALL_REPOSITORIES_FAILED'));
  assert.match(
    failure.message,
    new RegExp(`near/test-dbench\\.tar\\.bz2: sends more than the ${BODY.length.toString()} bytes its index gives; cut and discarded`),
  );
  assert.equal(log.length, 1, 'not tried again');
  await mkdir(path.dirname(dest), { recursive: true });
  assert.deepEqual(await readdir(path.dirname(dest)), [], 'neither the file, nor a part, nor its record is left');
});

test('passes over a repository whose bytes fail verification and takes the next', async (t) => {
  const corrupt = Buffer.from(BODY);
  corrupt[10] = 0x21;
  const { dir, log, fetcher } = await lab(t, { near: [{ kind: 'send', body: corrupt }], far: [serve] });
  const dest = path.join(dir, 'out', FILE);
  const fetched = await (await fetcher({ retries: 3 })).fetch(FILE, dest);
  assert.equal(fetched.repository, 'far');
  assert.deepEqual(asked(log), ['near', 'far'], 'a mismatch is not retried at the same repository');
  assert.match(
    fetched.passedOver.join('\n'),
    /near\/test-dbench\.tar\.bz2: sha256 [0-9a-f]{64} \(\d+ bytes\) does not match its index \([0-9a-f]{64}\); discarded/,
  );
  assert.deepEqual(await readFile(dest), BODY);
});

test('orders a | group per package by rendezvous', async (t) => {
  const names = ['f1', 'f2', 'f3'];
  const files = Array.from({ length: 12 }, (_, i) => `test-t${i.toString()}.tar.bz2`);
  const { dir, log, locations, fetcher } = await lab(t, Object.fromEntries(names.map((name) => [name, [missing]])), new Map(files.map((file) => [file, BODY])));
  const fetching = await fetcher({}, [{ kind: 'group', members: locations, text: names.join(' | ') }]);
  const orders = new Set<string>();
  for (const file of files) {
    log.length = 0;
    await assert.rejects(fetching.fetch(file, path.join(dir, 'out', file)), (error: unknown) => isAutotestError(error, 'ERR_ALL_REPOSITORIES_FAILED'));
    const expected = rankMembers(locations, memberKey, file).map((location) => location.text);
    assert.deepEqual(asked(log), expected, file);
    orders.add(expected.join(' '));
  }
  assert.ok(orders.size > 1, 'the packages do not all go to one member first');
});
