/**
 * Benchmark: `autotest packager upload --all` against the pipeline Autotest's packager amounts
 * to (serial `tar -cjf` per package, `md5sum * > packages.checksum`, `cp` to the location),
 * on a generated tree of 100 packages and about 70 MB (text and incompressible data), in
 * the same run. Prints times and the ratios; the targets are cold <= 0.3, unchanged <= 0.05.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { generate } from './tree.js';

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/cli/main.js');
function seconds(run: () => void): number {
  const start = process.hrtime.bigint();
  run();
  return Number(process.hrtime.bigint() - start) / 1e9;
}

function reference(client: string, out: string, location: string): void {
  execFileSync('mkdir', ['-p', out, location]);
  const client_excludes = ['--exclude=./tests/*', '--exclude=./deps/*', '--exclude=./profilers/*'];
  for (const folder of ['tests', 'deps', 'profilers']) {
    const type = folder === 'tests' ? 'test' : folder === 'deps' ? 'dep' : 'profiler';
    for (const name of execFileSync('ls', [path.join(client, folder)], { encoding: 'utf8' }).split('\n').filter(Boolean)) {
      execFileSync('tar', ['-cjf', path.join(out, `${type}-${name}.tar.bz2`), '-C', path.join(client, folder, name), '.']);
    }
  }
  execFileSync('tar', ['-cjf', path.join(out, 'client-autotest.tar.bz2'), ...client_excludes, '-C', client, '.']);
  execFileSync('sh', ['-c', 'md5sum *.tar.bz2 > packages.checksum'], { cwd: out });
  execFileSync('sh', ['-c', 'cp -- * "$1"/', 'sh', location], { cwd: out });
}

async function main(): Promise<void> {
  const work = await mkdtemp(path.join(tmpdir(), 'autotest-bench-'));
  try {
    const client = path.join(work, 'client');
    const bytes = await generate(client);
    const config = path.join(work, 'global_config.ini');
    const location = path.join(work, 'repo');
    await writeFile(config, `[PACKAGES]\nupload_location: ${location}\nclient_dir: ${client}\nminimum_free_space: 0\n`);
    const env = { ...process.env, AUTOTEST_CACHE_DIR: path.join(work, 'cache') };
    const ours = (): void => {
      execFileSync(process.execPath, [CLI, 'packager', 'upload', '--all', '--config', config], { env, stdio: 'ignore' });
    };
    // Warm the page cache for both sides alike.
    execFileSync('sh', ['-c', `cat $(find "${client}" -type f) > /dev/null`]);

    const gzipConfig = path.join(work, 'gzip.ini');
    await writeFile(gzipConfig, `[PACKAGES]\nupload_location: ${location}-gz\nclient_dir: ${client}\nminimum_free_space: 0\ncompression: gzip\n`);
    const oursGzip = (): void => {
      execFileSync(process.execPath, [CLI, 'packager', 'upload', '--all', '--config', gzipConfig], { env, stdio: 'ignore' });
    };
    // The floor on this machine: the whole tree as one stream through the parallel compressor.
    const floor = seconds(() => {
      execFileSync('sh', ['-c', 'tar -cf - -C "$1" . | lbzip2 -9 > /dev/null', 'sh', client]);
    });
    const runs = 3;
    const gz: number[] = [];
    const ref: number[] = [];
    const cold: number[] = [];
    const warm: number[] = [];
    for (let i = 0; i < runs; i += 1) {
      await rm(path.join(work, 'ref'), { recursive: true, force: true });
      ref.push(seconds(() => {
        reference(client, path.join(work, 'ref', 'out'), path.join(work, 'ref', 'location'));
      }));
      await rm(location, { recursive: true, force: true });
      await rm(path.join(work, 'cache'), { recursive: true, force: true });
      cold.push(seconds(ours));
      warm.push(seconds(ours));
      await rm(`${location}-gz`, { recursive: true, force: true });
      await rm(path.join(work, 'cache'), { recursive: true, force: true });
      gz.push(seconds(oursGzip));
    }
    const best = (xs: number[]): number => Math.min(...xs);
    const refBest = best(ref);
    console.log(`tree: 100 packages + client, ${(bytes / 1e6).toFixed(1)} MB (half text, half incompressible)`);
    console.log(`reference (serial tar -cjf + md5sum + cp): ${refBest.toFixed(2)} s   (best of ${runs})`);
    console.log(`autotest upload --all, cold:             ${best(cold).toFixed(2)} s   ratio ${(best(cold) / refBest).toFixed(3)}  (target <= 0.3)`);
    console.log(`autotest upload --all, cold, gzip:       ${best(gz).toFixed(2)} s   ratio ${(best(gz) / refBest).toFixed(3)}  (for comparison: compression = gzip)`);
    console.log(`floor: one tar stream | lbzip2:          ${floor.toFixed(2)} s   ratio ${(floor / refBest).toFixed(3)}  (no per-package work, no checksums, no copy)`);
    console.log(`autotest upload --all, unchanged re-run: ${best(warm).toFixed(2)} s   ratio ${(best(warm) / refBest).toFixed(3)}  (target <= 0.05)`);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

await main();
