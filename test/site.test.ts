import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { parseFetchLocation, type FetchLocation, type FetchSettings, type Location } from '../src/config/index.js';
import { installPackages } from '../src/client/install.js';
import { orderForPackage } from '../src/fetch/index.js';
import { uploadPackages } from '../src/packager/index.js';
import { runAutoserv } from '../src/autoserv/index.js';
import { copyExampleTree, generateTree, ROOT, tempDir } from './helpers.js';
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
    clientDir, selection: { all: true, tests: [], profilers: [], deps: [], client: false, files: [] },
    locations: [local], compression: 'bzip2', minimumFreeBytes: 0, cacheDir: path.join(dir, 'cache'),
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
    assert.deepEqual(records.map((r) => r.action), NAMES.map(() => 'fetched'), `machine ${machine}`);
  }
  const served = await servedBy(fronts);
  for (const name of NAMES) {
    const file = fileOf(name);
    const wanted = firstChoice(locations, file);
    assert.deepEqual(served.get(file), [wanted, wanted], `${file}: one GET per machine, both at its first choice`);
  }
  const shares = fronts.map((front) => NAMES.filter((name) => served.get(fileOf(name))?.[0] === front.url).length);
  assert.equal(shares.reduce((sum, n) => sum + n, 0), COUNT);
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
      hosts: ['localhost'], control, resultsDir: path.join(site.dir, `results-${machine}`), locations, clientDir: site.clientDir, hostDir: path.join(site.dir, machine),
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
