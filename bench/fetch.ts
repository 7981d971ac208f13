/**
 * Benchmark: the client's fetch of a 200 MB package from nginx on loopback (index read,
 * sha256 verification and rename included) against `curl -o` of the same URL, in the same
 * run; and the extra time an install takes when the first repository of fetch_location
 * refuses connections. Targets: throughput at least 0.9x curl's; extra time under 100 ms.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { time, writeRandom } from './timing.js';
import { fileURLToPath } from 'node:url';
import { installPackages } from '../src/client/install.js';
import type { FetchSettings, Location } from '../src/config/index.js';
import { PackageFetcher } from '../src/fetch/index.js';
import { Resources } from '../src/resources.js';
import { startNginx } from '../test/fixtures/nginx.js';
import { freePort } from '../test/fixtures/process.js';

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/cli/main.js');
const EXAMPLE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../example/client');
const SIZE = 200 * 1024 * 1024;
const RUNS = 5;
const SETTINGS: FetchSettings = { connectTimeoutMs: 5000, timeoutMs: 600_000, retries: 2, cooldownMs: 0, maxSizeBytes: 1e10 };

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

async function main(): Promise<void> {
  const work = await mkdtemp(path.join(tmpdir(), 'autotest-bench-fetch-'));
  const www = path.join(work, 'www');
  const repo = path.join(www, 'packages');
  await mkdir(repo, { recursive: true });
  try {
    const big = path.join(work, 'kernel-200m.img');
    await writeRandom(big, SIZE);
    const config = path.join(work, 'global_config.ini');
    await writeFile(config, `[PACKAGES]\nupload_location: ${repo}\nclient_dir: ${EXAMPLE}\nminimum_free_space: 0\n`);
    execFileSync(process.execPath, [CLI, 'packager', 'upload', '--all', '-f', big, '--config', config], {
      env: { ...process.env, AUTOTEST_CACHE_DIR: path.join(work, 'cache') },
      stdio: 'ignore',
    });
    const nginx = await startNginx({ root: www });
    try {
      const url = `${nginx.url}/packages`;
      const location: Location = { kind: 'http', url, text: url };
      const out = path.join(work, 'out');
      await mkdir(out);
      // Warm the page cache and both paths once.
      execFileSync('curl', ['-sf', '-o', path.join(out, 'curl.img'), `${url}/kernel-200m.img`]);
      const curl: number[] = [];
      const ours: number[] = [];
      // One Resources for every run, as one process holds them (keep-alive agent, hashing
      // thread); a fresh one per run would time the hashing thread's start-up each time.
      const resources = new Resources();
      for (let i = 0; i < RUNS; i += 1) {
        await rm(path.join(out, 'curl.img'), { force: true });
        curl.push(await time(() => Promise.resolve(execFileSync('curl', ['-sf', '-o', path.join(out, 'curl.img'), `${url}/kernel-200m.img`]))));
        await rm(path.join(out, 'ours.img'), { force: true });
        ours.push(
          await time(async () => {
            const fetcher = await PackageFetcher.create([location], SETTINGS, { resources });
            await fetcher.fetch('kernel-200m.img', path.join(out, 'ours.img'));
            await fetcher.close();
          }),
        );
      }
      await resources.close();
      const curlS = Math.min(...curl);
      const oursS = Math.min(...ours);
      const mb = SIZE / 1e6;
      console.log(`fetch of a 200 MB package from nginx on loopback (best of ${RUNS.toString()}):`);
      console.log(`  curl -o                          ${curlS.toFixed(3)} s  ${(mb / curlS).toFixed(0)} MB/s`);
      console.log(`  ours (index + sha256 verified)   ${oursS.toFixed(3)} s  ${(mb / oursS).toFixed(0)} MB/s`);
      console.log(`  throughput ratio ours/curl: ${(curlS / oursS).toFixed(2)}x (target >= 0.9x)`);

      const refused: Location = { kind: 'http', url: `http://127.0.0.1:${(await freePort()).toString()}/packages`, text: 'refused' };
      const direct: number[] = [];
      const fallback: number[] = [];
      for (let i = 0; i < 2 * RUNS; i += 1) {
        const installDir = path.join(work, `install-${i.toString()}`);
        direct.push(await time(() => installPackages('test', ['sleeptest'], { locations: [location], settings: SETTINGS, installDir: `${installDir}-a` })));
        fallback.push(
          await time(() => installPackages('test', ['sleeptest'], { locations: [refused, location], settings: SETTINGS, installDir: `${installDir}-b` })),
        );
      }
      const extraMs = (median(fallback) - median(direct)) * 1000;
      console.log(`install of one test (median of ${(2 * RUNS).toString()}):`);
      console.log(`  first repository answers        ${(median(direct) * 1000).toFixed(1)} ms`);
      console.log(`  first repository refuses        ${(median(fallback) * 1000).toFixed(1)} ms`);
      console.log(`  extra time for the refusal: ${extraMs.toFixed(1)} ms (target < 100 ms)`);
    } finally {
      await nginx.stop();
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

await main();
