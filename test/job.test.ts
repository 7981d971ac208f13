import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { installPackages } from '../src/client/install.js';
import { runJob } from '../src/client/job.js';
import type { Location } from '../src/config/index.js';
import { uploadPackages } from '../src/packager/index.js';
import { copyExampleTree, execFileAsync, ROOT, tempDir } from './helpers.js';

const SETTINGS = { connectTimeoutMs: 2000, timeoutMs: 10_000, retries: 1, cooldownMs: 0, maxSizeBytes: 1e9 };

function local(p: string): Location {
  return { kind: 'local', path: p, text: p };
}

/** Publishes a client tree (the example, plus `extra` files) to dir/repo. */
async function publish(t: TestContext, extra: Record<string, string> = {}): Promise<{ dir: string; repo: string }> {
  const dir = await tempDir(t);
  const clientDir = await copyExampleTree(dir);
  for (const [file, text] of Object.entries(extra)) {
    await mkdir(path.dirname(path.join(clientDir, file)), { recursive: true });
    await writeFile(path.join(clientDir, file), text);
  }
  const repo = path.join(dir, 'repo');
  const report = await uploadPackages({
    clientDir,
    selection: { all: true, tests: [], profilers: [], deps: [], client: false, files: [] },
    locations: [local(repo)],
    compression: 'bzip2',
    minimumFreeBytes: 0,
    cacheDir: path.join(dir, 'cache'),
  });
  assert.equal(report.ok, true);
  return { dir, repo };
}

/** The status words of status.log, in order, with their nesting. */
function statusLines(text: string): string[] {
  return text
    .trimEnd()
    .split('\n')
    .map((line) => {
      const [kind = '', , name = ''] = line.replace(/^\t+/, '').split('\t');
      return `${'  '.repeat(/^\t*/.exec(line)?.[0].length ?? 0)}${kind} ${name}`;
    });
}

test('runs the example job: installs exactly the packages it names, writes status.log, keyvals, profiler output and a transfer record; a second run moves no bytes', async (t) => {
  const { dir, repo } = await publish(t);
  const control = path.join(ROOT, 'example', 'jobs', 'example.control.mjs');
  const install = { locations: [local(repo)], settings: SETTINGS, installDir: path.join(dir, 'client') };
  const streamed: string[] = [];
  const first = await runJob({ control, resultsDir: path.join(dir, 'results-1'), install, onStatus: (line) => streamed.push(line) });
  assert.equal(first.status, 'GOOD');
  assert.deepEqual(
    first.transfers.map((r) => [r.file, r.action]).sort(),
    [
      ['dep-libaio.tar.bz2', 'fetched'],
      ['profiler-vmstat.tar.bz2', 'fetched'],
      ['test-dbench.tar.bz2', 'fetched'],
      ['test-sleeptest.tar.bz2', 'fetched'],
    ],
    'exactly the packages the job names: not hello, not the client',
  );
  assert.ok(first.totals.bytes > 0);
  const log = await readFile(path.join(dir, 'results-1', 'status.log'), 'utf8');
  assert.deepEqual(statusLines(log), [
    'START ----',
    '  GOOD dep.libaio',
    '  START sleeptest',
    '    GOOD sleeptest',
    '  END GOOD sleeptest',
    '  START dbench',
    '    GOOD dbench',
    '  END GOOD dbench',
    '  GOOD ----',
    'END GOOD ----',
  ]);
  assert.deepEqual(streamed, log.split('\n').slice(0, -1), 'each line was streamed as written');
  assert.match(log, /^START\t----\t----\ttimestamp=\d+\tlocaltime=\w{3} \d\d \d\d:\d\d:\d\d\t/);
  assert.equal(await readFile(path.join(dir, 'results-1', 'sleeptest', 'keyval'), 'utf8'), 'slept=1\n');
  await readFile(path.join(dir, 'results-1', 'dbench', 'profiling', 'vmstat.log'));
  const record = JSON.parse(await readFile(path.join(dir, 'results-1', 'transfers.json'), 'utf8')) as { totals: { bytes: number } };
  assert.equal(record.totals.bytes, first.totals.bytes);

  const second = await runJob({ control, resultsDir: path.join(dir, 'results-2'), install });
  assert.equal(second.status, 'GOOD');
  assert.equal(second.totals.bytes, 0);
  assert.deepEqual([...new Set(second.transfers.map((r) => r.action))], ['up-to-date']);
});

test('a failing test, a throwing test, a hanging test and a dep whose setup fails get FAIL, ERROR and ERROR lines, and the job ends with the worst status', async (t) => {
  const { dir, repo } = await publish(t, {
    'tests/failing/failing.mjs': "export async function run() { const e = new Error('the numbers are wrong'); e.name = 'TestFail'; throw e; }\n",
    'tests/throwing/throwing.mjs': 'export async function run() { return undefined.missing; }\n',
    'tests/hanging/hanging.mjs': 'export function run() { return new Promise(() => undefined); }\n',
    'deps/broken/broken.mjs': "export async function setup() { throw new Error('cannot build'); }\n",
  });
  const control = path.join(dir, 'faults.control.mjs');
  await writeFile(
    control,
    `export default async (job) => {
  await job.runTest('failing');
  await job.runTest('throwing');
  await job.runTest('hanging');
  try { await job.setupDep('broken'); } catch { /* the job goes on without it */ }
  await job.runTest('hello');
  await job.runTest('nosuchtest');
};
`,
  );
  const report = await runJob({
    control,
    resultsDir: path.join(dir, 'results'),
    stepTimeoutMs: 500,
    install: { locations: [local(repo)], settings: SETTINGS, installDir: path.join(dir, 'client') },
  });
  assert.deepEqual(
    report.tests.map((r) => [r.name, r.status]),
    [
      ['failing', 'FAIL'],
      ['throwing', 'ERROR'],
      ['hanging', 'ERROR'],
      ['hello', 'GOOD'],
      ['nosuchtest', 'ERROR'],
    ],
  );
  assert.match(report.tests[0]?.message ?? '', /the numbers are wrong/);
  assert.match(report.tests[2]?.message ?? '', /did not finish within 0\.5 s/);
  assert.match(report.tests[4]?.message ?? '', /test-nosuchtest\.tar\.bz2/);
  assert.equal(report.status, 'ERROR');
  const log = await readFile(path.join(dir, 'results', 'status.log'), 'utf8');
  assert.match(log, /\tERROR\t----\tdep\.broken\t.*cannot build/);
  assert.match(log, /\tFAIL\tfailing\tfailing\t.*the numbers are wrong/);
  assert.match(log, /^END ERROR\t----\t----/m);
});

test('a control file that throws ends the job with ABORT and says why', async (t) => {
  const { dir, repo } = await publish(t);
  const control = path.join(dir, 'abort.control.mjs');
  await writeFile(control, "export default async (job) => { await job.runTest('hello'); throw new Error('lost the machine'); };\n");
  const report = await runJob({
    control,
    resultsDir: path.join(dir, 'results'),
    install: { locations: [local(repo)], settings: SETTINGS, installDir: path.join(dir, 'client') },
  });
  assert.equal(report.status, 'ABORT');
  assert.match(await readFile(path.join(dir, 'results', 'status.log'), 'utf8'), /\tABORT\t----\t----\t.*lost the machine/);
});

test('the client package carries the client runtime: unpacked alone, with Node.js and no node_modules, it runs the example job', async (t) => {
  const { dir, repo } = await publish(t);
  const machine = path.join(dir, 'machine');
  const [record] = await installPackages('client', ['autotest'], { locations: [local(repo)], settings: SETTINGS, installDir: machine });
  assert.equal(record?.action, 'fetched');
  const runtime = path.join(machine, 'client', 'bin', 'autotest-client.mjs');
  const control = path.join(machine, 'example.control.mjs');
  await writeFile(control, await readFile(path.join(ROOT, 'example', 'jobs', 'example.control.mjs')));
  const result = await execFileAsync(
    process.execPath,
    [runtime, 'client', 'run', control, '--install-dir', machine, '-r', repo, '--results', path.join(machine, 'results'), '--json'],
    {
      cwd: machine,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', AUTOTEST_CONFIG: '' },
    },
  );
  const report = JSON.parse(result.stdout.slice(result.stdout.indexOf('{\n'))) as { status: string; totals: { packages: number } };
  assert.equal(report.status, 'GOOD');
  assert.equal(report.totals.packages, 4);
  assert.match(await readFile(path.join(machine, 'results', 'status.log'), 'utf8'), /^END GOOD\t----/m);
});

test("a control file's declared packages are fetched ahead, before its first test, and transfers.json says which were and how long the job waited", async (t) => {
  const { dir, repo } = await publish(t);
  const installDir = path.join(dir, 'client');
  const declared = ['deps/libaio', 'profilers/vmstat', 'tests/sleeptest'].map((folder) => path.join(installDir, folder, '.checksum'));
  const control = path.join(dir, 'ahead.control.mjs');
  await writeFile(
    control,
    [
      "import { existsSync } from 'node:fs';",
      "import { writeFile } from 'node:fs/promises';",
      "export const packages = { tests: ['sleeptest'], deps: ['libaio'], profilers: ['vmstat'] };",
      'export default async (job) => {',
      `  const present = ${JSON.stringify(declared)}.filter((file) => existsSync(file));`,
      '  await writeFile(`${job.resultsDir}/present-at-start.json`, JSON.stringify(present));',
      "  await job.setupDep(['libaio']);",
      "  await job.profilers.add('vmstat');",
      "  await job.runTest('sleeptest', { seconds: 1 });",
      "  await job.runTest('dbench', { seconds: 1 });",
      '};',
      '',
    ].join('\n'),
  );
  const resultsDir = path.join(dir, 'results');
  const report = await runJob({ control, resultsDir, install: { locations: [local(repo)], settings: SETTINGS, installDir } });
  assert.equal(report.status, 'GOOD');
  assert.deepEqual(
    JSON.parse(await readFile(path.join(resultsDir, 'present-at-start.json'), 'utf8')),
    declared,
    "every declared package was installed before the job's first step",
  );
  const record = JSON.parse(await readFile(path.join(resultsDir, 'transfers.json'), 'utf8')) as {
    transfers: { file: string; action: string; ahead: boolean }[];
    waitSeconds: number;
  };
  assert.deepEqual(
    record.transfers.map((r) => [r.file, r.action, r.ahead]).sort(),
    [
      ['dep-libaio.tar.bz2', 'fetched', true],
      ['profiler-vmstat.tar.bz2', 'fetched', true],
      ['test-dbench.tar.bz2', 'fetched', false],
      ['test-sleeptest.tar.bz2', 'fetched', true],
    ],
    'each package once; the undeclared one on demand',
  );
  assert.equal(typeof record.waitSeconds, 'number');
  assert.ok(record.waitSeconds > 0 && record.waitSeconds <= report.totals.seconds, "the wait is part of the job's time");
});

test('a control file whose packages export is malformed aborts the job with the reason', async (t) => {
  const { dir, repo } = await publish(t);
  const control = path.join(dir, 'bad.control.mjs');
  await writeFile(control, "export const packages = { tests: 'sleeptest', extra: [] };\nexport default async () => {};\n");
  const report = await runJob({
    control,
    resultsDir: path.join(dir, 'results'),
    install: { locations: [local(repo)], settings: SETTINGS, installDir: path.join(dir, 'client') },
  });
  assert.equal(report.status, 'ABORT');
  assert.match(await readFile(path.join(dir, 'results', 'status.log'), 'utf8'), /export const packages has an unknown key "extra"/);
});
