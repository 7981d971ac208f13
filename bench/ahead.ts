/**
 * Benchmark: a job's packages fetched ahead. The example job (a dep, a profiler, two tests)
 * plus 20 tests of 1 MB each (half code-like text, half already-compressed data, as test
 * packages that ship sources and tarballs are), run by autoserv on three namespace hosts, in
 * one run: the control file declaring every package it needs (`export const packages`: the
 * client fetches them, four at a time, before the first test) and the same job without the
 * declaration (each package installed when its step asks for it). Each try starts from host
 * folders whose client is installed and whose package cache is empty. Reports setup (client
 * check, then the job's wait on packages; slowest host) and the job's wall time.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createLab, type AutoservRun } from './lab.js';
import { compressed, random, text } from './tree.js';

const BULK_TESTS = 20;
const TEST_BYTES = 1024 * 1024;
const TRIES = 3;

/** A test that ships its sources and a tarball, and reads them as it runs. */
const BULK_MODULE = `import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
export async function run() {
  const md5 = createHash('md5');
  for (const file of ['src/main.c', 'src/helpers.py', 'data.tar.gz']) md5.update(readFileSync(new URL(file, import.meta.url)));
  return { keyvals: { md5: md5.digest('hex') } };
}
`;

function controlFile(names: readonly string[], declared: boolean): string {
  const list = (items: readonly string[]): string => `[${items.map((name) => `'${name}'`).join(', ')}]`;
  return [
    ...(declared ? [`export const packages = { tests: ${list(['sleeptest', 'dbench', ...names])}, deps: ['libaio'], profilers: ['vmstat'] };`] : []),
    'export default async (job) => {',
    "  await job.setupDep(['libaio']);",
    "  await job.profilers.add('vmstat');",
    "  await job.runTest('sleeptest', { seconds: 1 });",
    "  await job.runTest('dbench', { seconds: 1 });",
    `  for (const name of ${list(names)}) await job.runTest(name);`,
    "  job.profilers.remove('vmstat');",
    '};',
    '',
  ].join('\n');
}

/** The longest the job waited on packages on one host (transfers.json's waitSeconds). */
async function waitSeconds(run: AutoservRun): Promise<number> {
  const waits = await Promise.all(
    run.summaries.map(async (s) => (JSON.parse(await readFile(path.join(s.results, 'transfers.json'), 'utf8')) as { waitSeconds: number }).waitSeconds),
  );
  return Math.max(...waits);
}

async function main(): Promise<void> {
  const names = Array.from({ length: BULK_TESTS }, (_, i) => `bulk${i.toString().padStart(2, '0')}`);
  const lab = await createLab(async (clientDir) => {
    for (const [i, name] of names.entries()) {
      const dir = path.join(clientDir, 'tests', name);
      const rand = random(1000 + i);
      await mkdir(path.join(dir, 'src'), { recursive: true });
      await writeFile(path.join(dir, `${name}.mjs`), BULK_MODULE);
      await writeFile(path.join(dir, 'src', 'main.c'), text(TEST_BYTES / 4, rand));
      await writeFile(path.join(dir, 'src', 'helpers.py'), text(TEST_BYTES / 4, rand));
      await writeFile(path.join(dir, 'data.tar.gz'), compressed(TEST_BYTES / 2, 1000 + i));
    }
  });
  try {
    const controls = { ahead: path.join(lab.work, 'ahead.control.mjs'), 'on demand': path.join(lab.work, 'on-demand.control.mjs') };
    await writeFile(controls.ahead, controlFile(names, true));
    await writeFile(controls['on demand'], controlFile(names, false));
    const empty = path.join(lab.work, 'empty.control.mjs');
    await writeFile(empty, 'export default async () => {};\n');
    const results: Record<keyof typeof controls, { run: AutoservRun; wait: number }[]> = { ahead: [], 'on demand': [] };
    // Alternated, so both ways see the same load on the shared machine.
    for (let i = 0; i < TRIES; i += 1) {
      for (const way of ['ahead', 'on demand'] as const) {
        const hostDir = path.join(lab.work, `hosts-${way.replace(' ', '-')}-${i.toString()}`, '{host}');
        await lab.run(`client for ${way} ${i.toString()}`, empty, hostDir);
        const run = await lab.run(`${way} ${i.toString()}`, controls[way], hostDir);
        const fetched = run.summaries.map((s) => s.setup.bytes);
        if (fetched.some((bytes) => bytes === 0)) throw new Error(`${way}: a host fetched nothing: ${JSON.stringify(run.summaries)}`);
        results[way].push({ run, wait: await waitSeconds(run) });
      }
    }
    console.log(
      `autoserv, the example job + ${BULK_TESTS.toString()} tests of 1 MB (half text, half compressed data) on 3 namespace hosts; client installed, package cache empty;`,
    );
    console.log(
      `setup = client check + the job's wait on packages (slowest host); job = the whole autoserv run; best of ${TRIES.toString()} (median in brackets):`,
    );
    const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? NaN;
    const line = (values: number[]): string => `${Math.min(...values).toFixed(2)} s (${median(values).toFixed(2)})`;
    for (const way of ['ahead', 'on demand'] as const) {
      const tries = results[way];
      console.log(
        `  ${way.padEnd(10)} setup ${line(tries.map((r) => r.run.setup))}  wait ${line(tries.map((r) => r.wait))}  job ${line(tries.map((r) => r.run.seconds))}  ${(tries[0]?.run.bytes ?? 0).toString()} bytes`,
      );
    }
    const best = (way: keyof typeof controls, pick: (r: { run: AutoservRun; wait: number }) => number): number => Math.min(...results[way].map(pick));
    console.log(
      `  ahead / on demand: setup ${(best('ahead', (r) => r.run.setup) / best('on demand', (r) => r.run.setup)).toFixed(2)}x, job ${(best('ahead', (r) => r.run.seconds) / best('on demand', (r) => r.run.seconds)).toFixed(2)}x`,
    );
  } finally {
    await lab.stop();
  }
}

await main();
