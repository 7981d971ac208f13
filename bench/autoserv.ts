/**
 * Benchmark: setup of the example job by autoserv on three namespace hosts (each with its own
 * sshd; the repository served by nginx on each link), in one run: packaging cold (fresh host
 * folders), packaging warm (the same folders again), and without packaging (the full client
 * tree copied to each host, as Autotest does with packaging off). Reports wall time and bytes
 * moved for setup. Targets: warm moves at most 1% of the full copy's bytes and takes at most
 * 0.1x its time.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { createLab, ROOT, type AutoservRun } from './lab.js';

async function main(): Promise<void> {
  const lab = await createLab(async (clientDir) => {
    // A lab-sized tree: 60 more tests of 1 MB each, which a full copy sends to every host.
    for (let i = 0; i < 60; i += 1) {
      const test = path.join(clientDir, 'tests', `bulk${i.toString().padStart(2, '0')}`);
      await mkdir(test, { recursive: true });
      await writeFile(path.join(test, 'data.bin'), randomBytes(1024 * 1024));
    }
  });
  const { work } = lab;
  try {
    const control = path.join(ROOT, 'example', 'jobs', 'example.control.mjs');
    const run = (label: string, hostDir: string, way: 'auto' | 'full copy'): Promise<AutoservRun> => lab.run(label, control, hostDir, way);
    // Best of a few runs each (fresh host folders for cold and full copy): three hosts and
    // their sshd share two cores, so single runs are noisy.
    const best = async (label: string, tries: number, dir: (i: number) => string, way: 'auto' | 'full copy'): Promise<AutoservRun> => {
      let found: AutoservRun | undefined;
      for (let i = 0; i < tries; i += 1) {
        const result = await run(`${label} ${i.toString()}`, dir(i), way);
        if (!found || result.setup < found.setup) found = { ...result, label };
      }
      if (!found) throw new Error('no run');
      return found;
    };
    const cold = await best('packaging, cold', 2, (i) => path.join(work, `hosts-cold-${i.toString()}`, '{host}'), 'auto');
    const warm = await best('packaging, warm', 3, () => path.join(work, 'hosts-cold-1', '{host}'), 'auto');
    const full = await best('no packaging (full copy)', 2, (i) => path.join(work, `hosts-full-${i.toString()}`, '{host}'), 'full copy');
    console.log(
      'autoserv, example job on 3 namespace hosts; setup = client install + every package fetched or checked (slowest host), bytes summed over hosts:',
    );
    for (const r of [cold, warm, full]) {
      console.log(
        `  ${r.label.padEnd(26)} setup ${r.setup.toFixed(2)} s  ${r.bytes.toString().padStart(10)} bytes  (whole run ${r.seconds.toFixed(2)} s; client by ${r.summaries[0]?.clientInstall ?? '?'})`,
      );
    }
    console.log(
      `  warm / full copy: bytes ${((100 * warm.bytes) / full.bytes).toFixed(3)}% (target <= 1%), setup time ${(warm.setup / full.setup).toFixed(2)}x (target <= 0.1x)`,
    );
  } finally {
    await lab.stop();
  }
}

await main();
