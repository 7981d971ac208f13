import assert from 'node:assert/strict';
import { access, readFile, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import net, { type AddressInfo } from 'node:net';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { parseFetchLocation, type FetchLocation, type FetchSettings, type Location } from '../src/config/index.js';
import { installPackages } from '../src/client/install.js';
import { packageLockPath } from '../src/client/cache.js';
import { isAutotestError } from '../src/errors.js';
import { spawnLocalFlock, withHeldLock } from '../src/repositories/lock.js';
import { orderForPackage } from '../src/fetch/index.js';
import { uploadPackages } from '../src/packager/index.js';
import { runAutoserv } from '../src/autoserv/index.js';
import { copyExampleTree, generateTree, ROOT, runCli, tempDir, writeConfig } from './helpers.js';
import { startNginx, type NginxServer } from './fixtures/nginx.js';

const SETTINGS: FetchSettings = { connectTimeoutMs: 2000, timeoutMs: 20_000, retries: 1, cooldownMs: 0, maxSizeBytes: 1e9 };
const COUNT = 30;
const NAMES = Array.from({ length: COUNT }, (_, i) => `t${String(i).padStart(3, '0')}`);
const fileOf = (name: string): string => `test-${name}.tar.bz2`;

interface Site {
  dir: string;
  repo: string;
}

/** A repository of `count` small generated tests (or the example tree), published by the real packager. */
async function publishGenerated(t: TestContext, count: number | 'example'): Promise<Site & { clientDir: string }> {
  const dir = await tempDir(t);
  const clientDir = count === 'example' ? await copyExampleTree(dir) : await generateTree(dir, count, 2048);
  const repo = path.join(dir, 'repo');
  const local: Location = { kind: 'local', path: repo, text: repo };
  const report = await uploadPackages({
    clientDir,
    selection: { all: true, tests: [], profilers: [], deps: [], client: false, files: [] },
    locations: [local],
    compression: 'bzip2',
    minimumFreeBytes: 0,
    cacheDir: path.join(dir, 'cache'),
  });
  assert.equal(report.ok, true);
  return { dir, repo, clientDir };
}

/** Three nginx fronts serving the same repository, each with its own access log. */
async function startFronts(t: TestContext, repo: string): Promise<NginxServer[]> {
  const fronts = await Promise.all([1, 2, 3].map(() => startNginx({ root: repo })));
  t.after(() => Promise.all(fronts.map((front) => front.stop())));
  return fronts;
}

/** The package files a front's access log shows as served (200 or 206), one per GET. */
async function packageGets(front: NginxServer): Promise<string[]> {
  const log = await readFile(front.accessLog, 'utf8').catch(() => '');
  return [...log.matchAll(/"GET \/([a-z]+-[^ ]+\.tar\.bz2) HTTP\/[\d.]+" 20[06] /g)].map((match) => match[1] ?? '');
}

/** For each package file, the fronts (by URL) that served a GET of it, one entry per GET. */
async function servedBy(fronts: NginxServer[]): Promise<Map<string, string[]>> {
  const served = new Map<string, string[]>();
  for (const front of fronts) {
    for (const file of await packageGets(front)) served.set(file, [...(served.get(file) ?? []), front.url]);
  }
  return served;
}

const exists = (p: string): Promise<boolean> =>
  access(p).then(
    () => true,
    () => false,
  );

const firstChoice = (locations: FetchLocation[], file: string): string => {
  const [first] = orderForPackage(locations, file);
  return first?.kind === 'http' ? first.url : '';
};

test('two machines installing 30 packages through a "|" group get each from the same front, once per machine, spread over the three fronts; a killed front\'s packages go to their next choice', async (t) => {
  const site = await publishGenerated(t, COUNT);
  const fronts = await startFronts(t, site.repo);
  const locations = [parseFetchLocation(fronts.map((front) => front.url).join(' | '), '/')];
  for (const machine of ['a', 'b']) {
    const records = await installPackages('test', NAMES, { locations, settings: SETTINGS, installDir: path.join(site.dir, machine) });
    assert.deepEqual(
      records.map((r) => r.action),
      NAMES.map(() => 'fetched'),
      `machine ${machine}`,
    );
  }
  const served = await servedBy(fronts);
  for (const name of NAMES) {
    const file = fileOf(name);
    const wanted = firstChoice(locations, file);
    assert.deepEqual(served.get(file), [wanted, wanted], `${file}: one GET per machine, both at its first choice`);
  }
  const shares = fronts.map((front) => NAMES.filter((name) => served.get(fileOf(name))?.[0] === front.url).length);
  assert.equal(
    shares.reduce((sum, n) => sum + n, 0),
    COUNT,
  );
  for (const [i, share] of shares.entries()) assert.ok(share > 0, `front ${i.toString()} serves some of the packages`);

  const [killed, ...alive] = fronts;
  assert.ok(killed);
  const before = new Map(await Promise.all(alive.map(async (front) => [front.url, (await packageGets(front)).length] as const)));
  await killed.stop();
  const records = await installPackages('test', NAMES, { locations, settings: SETTINGS, installDir: path.join(site.dir, 'c') });
  assert.equal(records.length, COUNT);
  const after = await servedBy(alive);
  for (const name of NAMES) {
    const file = fileOf(name);
    const [first, second] = orderForPackage(locations, file).map((l) => (l.kind === 'http' ? l.url : ''));
    const wanted: string | undefined = first === killed.url ? second : first;
    assert.equal(after.get(file)?.at(-1), wanted, `${file}: from ${String(wanted)}`);
  }
  let newGets = 0;
  for (const front of alive) newGets += (await packageGets(front)).length - (before.get(front.url) ?? 0);
  assert.equal(newGets, COUNT, 'one GET per package from the third machine, none lost to the killed front');
});

test('autoserv\'s hosts get the client package and the job\'s packages through a "|" group from the front ranked first for each, and from the next one when that front is down', async (t) => {
  const site = await publishGenerated(t, 'example');
  const fronts = await startFronts(t, site.repo);
  const locations = [parseFetchLocation(fronts.map((front) => front.url).join(' | '), '/')];
  const control = path.join(ROOT, 'example', 'jobs', 'example.control.mjs');
  const run = async (machine: string): Promise<void> => {
    const [summary] = await runAutoserv({
      hosts: ['localhost'],
      control,
      resultsDir: path.join(site.dir, `results-${machine}`),
      locations,
      clientDir: site.clientDir,
      hostDir: path.join(site.dir, machine),
    });
    assert.equal(summary?.clientInstall, 'packaging', summary?.why.join('; '));
    assert.equal(summary.status, 'GOOD', summary.error);
  };
  await run('a');
  await run('b');
  const served = await servedBy(fronts);
  const files = ['client-autotest.tar.bz2', 'dep-libaio.tar.bz2', 'profiler-vmstat.tar.bz2', 'test-sleeptest.tar.bz2', 'test-dbench.tar.bz2'];
  for (const file of files) {
    const wanted = firstChoice(locations, file);
    assert.deepEqual(served.get(file), [wanted, wanted], `${file}: one GET per host, both at its first choice`);
  }
  const clientFront = fronts.find((front) => front.url === firstChoice(locations, 'client-autotest.tar.bz2'));
  assert.ok(clientFront);
  await clientFront.stop();
  await run('c');
  const [, next] = orderForPackage(locations, 'client-autotest.tar.bz2');
  const after = await servedBy(fronts.filter((front) => front !== clientFront));
  assert.equal(after.get('client-autotest.tar.bz2')?.at(-1), next?.kind === 'http' ? next.url : '', 'the client package comes from its next choice');
});

/** Runs `work` while holding a package's lock, as another install of it would. */
async function whileLocked<T>(lockPath: string, work: () => Promise<T>): Promise<T> {
  let release = (): void => undefined;
  const done = new Promise<void>((resolve) => {
    release = resolve;
  });
  let locked = (): void => undefined;
  const held = new Promise<void>((resolve) => {
    locked = resolve;
  });
  const holding = withHeldLock(spawnLocalFlock(lockPath), 'another install', async () => {
    locked();
    await done;
  });
  await held;
  try {
    return await work();
  } finally {
    release();
    await holding;
  }
}

/** A listener that accepts and records every connection, and answers none. */
async function connectionRecorder(t: TestContext): Promise<{ url: string; connections: () => number }> {
  let count = 0;
  const server = net.createServer((socket) => {
    count += 1;
    socket.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) =>
        server.close(() => {
          resolve();
        }),
      ),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port.toString()}/repo`, connections: () => count };
}

test('offline, packages come from the install folder or the package cache, verified against the entry stored with them, no connection is opened, and every missing package is named', async (t) => {
  const site = await publishGenerated(t, 'example');
  const installDir = path.join(site.dir, 'machine');
  const repo: Location = { kind: 'local', path: site.repo, text: site.repo };
  await installPackages('test', ['dbench', 'sleeptest'], { locations: [repo], settings: SETTINGS, installDir });
  const recorder = await connectionRecorder(t);
  const offline = { locations: [parseFetchLocation(recorder.url, '/')], settings: SETTINGS, installDir, offline: true };

  await rm(path.join(installDir, 'tests', 'sleeptest'), { recursive: true });
  const records = await installPackages('test', ['dbench', 'sleeptest'], offline);
  assert.deepEqual(
    records.map((r) => [r.name, r.action]),
    [
      ['dbench', 'up-to-date'],
      ['sleeptest', 'from-cache'],
    ],
  );
  assert.ok(await stat(path.join(installDir, 'tests', 'sleeptest', 'sleeptest.mjs')));

  await rm(path.join(installDir, 'tests', 'dbench'), { recursive: true });
  await writeFile(path.join(installDir, 'packages', 'test-dbench.tar.bz2'), 'not the package');
  await assert.rejects(installPackages('test', ['dbench', 'sleeptest', 'nosuchtest', 'other'], offline), (error: unknown) => {
    assert.ok(isAutotestError(error, 'ERR_OFFLINE_MISSING'));
    assert.match(error.message, /3 package\(s\) cannot be installed/);
    assert.match(error.message, /test dbench: test-dbench\.tar\.bz2 is not in the package cache, or fails its checksum/);
    assert.match(error.message, /test nosuchtest: neither installed nor cached/);
    assert.match(error.message, /test other: neither installed nor cached/);
    assert.doesNotMatch(error.message, /sleeptest/);
    return true;
  });
  assert.equal(await exists(path.join(installDir, 'tests', 'dbench')), false, 'a package failing its checksum is not installed');

  const config = await writeConfig(site.dir, { fetch_location: recorder.url });
  const cli = await runCli(['client', 'install', '--offline', '--config', config, '--install-dir', installDir, 'test', 'sleeptest,nosuchtest'], {
    cwd: site.dir,
  });
  assert.notEqual(cli.code, 0);
  assert.match(cli.stderr, /test nosuchtest: neither installed nor cached/);
  assert.equal(recorder.connections(), 0, 'no connection at all');
});

test('client_cache_size trims the package cache by least recent use after an install, passing over a tarball another install holds and never touching installed packages', async (t) => {
  const site = await publishGenerated(t, 7);
  const installDir = path.join(site.dir, 'machine');
  const cacheDir = path.join(installDir, 'packages');
  const repo: Location = { kind: 'local', path: site.repo, text: site.repo };
  const names = NAMES.slice(0, 7);
  await installPackages('test', names.slice(0, 6), { locations: [repo], settings: SETTINGS, installDir });
  // Last used in name order, long ago: t000 is the least recently used.
  const base = Date.now() / 1000 - 1000;
  for (const [i, name] of names.slice(0, 6).entries()) await utimes(path.join(cacheDir, fileOf(name)), base + i, base + i);
  const sizeOf = async (name: string): Promise<number> => (await stat(path.join(site.repo, fileOf(name)))).size;
  const limit = (await sizeOf('t000')) + (await sizeOf('t005')) + (await sizeOf('t006'));

  // Another install of t000 under way: it holds that package's lock.
  await whileLocked(packageLockPath(cacheDir, 'test', 't000'), () =>
    installPackages('test', ['t006'], { locations: [repo], settings: SETTINGS, installDir, cacheSizeBytes: limit }),
  );
  const cached = (await readdir(cacheDir)).filter((file) => file.endsWith('.tar.bz2')).sort();
  assert.deepEqual(cached, [fileOf('t000'), fileOf('t005'), fileOf('t006')]);
  for (const name of names) assert.ok(await exists(path.join(installDir, 'tests', name, '.checksum')), `${name} stays installed`);
});
