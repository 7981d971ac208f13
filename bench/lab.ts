/**
 * The lab the autoserv benchmarks run in: three namespace hosts, each with its own sshd and an
 * nginx on its link serving the repository, and a copy of the example client tree (with what
 * the benchmark adds to it) uploaded there.
 */
import { execFileSync } from 'node:child_process';
import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runAutoserv, type HostSummary } from '../src/autoserv/index.js';
import { loadConfig, type FetchLocation } from '../src/config/index.js';
import { createNamespaceHost } from '../test/fixtures/netns.js';
import { startNginx } from '../test/fixtures/nginx.js';
import { startSshd, writeSshConfig, type SshServer } from '../test/fixtures/sshd.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CLI = path.join(ROOT, 'dist/src/cli/main.js');

export interface AutoservRun {
  label: string;
  /** The whole autoserv run, start to the last host's results. */
  seconds: number;
  /** Setup of the slowest host: client check or install, then the job's wait on packages. */
  setup: number;
  /** Bytes moved for setup, summed over the hosts. */
  bytes: number;
  summaries: HostSummary[];
}

export interface Lab {
  work: string;
  clientDir: string;
  /** Runs `control` on the three hosts, their folders under `hostDir` ("{host}" in it). */
  run(label: string, control: string, hostDir: string, clientInstall?: 'auto' | 'full copy'): Promise<AutoservRun>;
  stop(): Promise<void>;
}

/** Builds the lab; `fill` adds to the client tree before it is uploaded. */
export async function createLab(fill: (clientDir: string) => Promise<void>): Promise<Lab> {
  const work = await mkdtemp(path.join(tmpdir(), 'autotest-bench-autoserv-'));
  const stops: (() => Promise<void>)[] = [];
  const stop = async (): Promise<void> => {
    for (const one of stops.reverse()) await one().catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  };
  try {
    const clientDir = path.join(work, 'client');
    await cp(path.join(ROOT, 'example', 'client'), clientDir, { recursive: true, verbatimSymlinks: true });
    await fill(clientDir);
    const builtin = path.join(work, 'www', 'builtin');
    await mkdir(builtin, { recursive: true });
    const hosts: { sshd: SshServer; url: string }[] = [];
    for (let i = 0; i < 3; i += 1) {
      const ns = await createNamespaceHost(40 + i);
      stops.push(() => ns.destroy());
      const sshd = await startSshd({ netns: ns.name });
      stops.push(() => sshd.stop());
      const nginx = await startNginx({
        root: work,
        listenAddress: ns.hostSideAddress,
        extraLocations: `location /packages/ { alias ${path.join(work, 'www')}/; }`,
      });
      stops.push(() => nginx.stop());
      hosts.push({ sshd, url: `${nginx.url}/packages/builtin` });
    }
    process.env.AUTOTEST_SSH_CONFIG = await writeSshConfig(
      hosts.map((h) => h.sshd),
      path.join(work, 'ssh_config'),
    );
    const configFile = path.join(work, 'global_config.ini');
    await writeFile(
      configFile,
      `[PACKAGES]\nupload_location: ${builtin}\nfetch_location: ${hosts.map((h) => h.url).join(', ')}\nclient_dir: ${clientDir}\nminimum_free_space: 0\n`,
    );
    execFileSync(process.execPath, [CLI, 'packager', 'upload', '--all', '--config', configFile], {
      env: { ...process.env, AUTOTEST_CACHE_DIR: path.join(work, 'cache') },
      stdio: 'ignore',
    });
    const locations: FetchLocation[] = (await loadConfig({ file: configFile })).packages.fetchLocations;
    const run: Lab['run'] = async (label, control, hostDir, clientInstall = 'auto') => {
      const started = performance.now();
      const summaries = await runAutoserv({
        hosts: hosts.map((h) => h.sshd.alias),
        control,
        resultsDir: path.join(work, 'results', label.replace(/[^A-Za-z0-9]+/g, '-')),
        locations,
        clientDir,
        hostDir,
        clientInstall,
      });
      // runAutoserv closes its own SSH hosts, as the CLI does after each run: the master connections stay for the next (ControlPersist).
      const seconds = (performance.now() - started) / 1000;
      if (summaries.some((s) => s.status !== 'GOOD')) throw new Error(`${label}: ${JSON.stringify(summaries)}`);
      // Hosts set up in parallel: the setup time of the run is the slowest host's.
      return {
        label,
        seconds,
        setup: Math.max(...summaries.map((s) => s.setup.seconds)),
        bytes: summaries.reduce((sum, s) => sum + s.setup.bytes, 0),
        summaries,
      };
    };
    return { work, clientDir, run, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}
