/**
 * Benchmark: `autotest serve` against nginx on the same folder, with the same load generator
 * (wrk, loopback, bounded runs), in one run: requests per second for packages.checksum,
 * throughput for a 5 MB package, and the peak RSS of our server at 1,000 concurrent
 * connections. Both servers write an access log to a file. packages.checksum is a real-size
 * one (134 entries, 7.6 KB), and its request rate is measured RUNS times on each server,
 * alternately, to show the spread. Targets: at least 0.6x nginx's request rate, at least 0.7x
 * its throughput, RSS at most 150 MB.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { openSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startNginx } from '../test/fixtures/nginx.js';

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/cli/main.js');
const EXAMPLE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../example/client');
const SECONDS = 5;
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const CHECKSUM_ENTRIES = 134;

interface WrkResult {
  requestsPerSecond: number;
  bytesPerSecond: number;
}

const UNITS: Record<string, number> = { B: 1, KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3 };

function wrk(url: string, connections: number, threads = 2): WrkResult {
  const out = execFileSync('wrk', ['-t', threads.toString(), '-c', connections.toString(), '-d', `${SECONDS.toString()}s`, '--timeout', '10s', url], {
    encoding: 'utf8',
  });
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1]);
  const transfer = /Transfer\/sec:\s+([\d.]+)(B|KB|MB|GB)/.exec(out);
  return { requestsPerSecond: rps, bytesPerSecond: Number(transfer?.[1]) * (UNITS[transfer?.[2] ?? 'B'] ?? 1) };
}

async function peakRssMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid.toString()}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1]) / 1024;
}

/** A real-size packages.checksum: 134 lines of `<md5>  <type>-<name>.tar.bz2` (7.6 KB). */
function realSizeChecksum(): string {
  const types = ['test', 'client', 'profiler', 'dep'];
  const names = ['sleeptest', 'dbench', 'kernbench', 'bonnie', 'iozone', 'fio', 'ltp', 'netperf2', 'tbench', 'hackbench', 'cpuset', 'disktest'];
  const lines: string[] = [];
  for (let i = 0; i < CHECKSUM_ENTRIES; i += 1) {
    const md5 = createHash('md5').update(i.toString()).digest('hex');
    lines.push(`${md5}  ${types[i % types.length] ?? 'test'}-${names[i % names.length] ?? 'fio'}${i.toString()}.tar.bz2`);
  }
  return `${lines.join('\n')}\n`;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

async function main(): Promise<void> {
  const work = await mkdtemp(path.join(tmpdir(), 'autotest-bench-server-'));
  const www = path.join(work, 'www');
  const builtin = path.join(www, 'builtin');
  await mkdir(builtin, { recursive: true });
  try {
    const big = path.join(work, 'kernel-5m.img');
    await writeFile(big, randomBytes(5 * 1024 * 1024));
    const config = path.join(work, 'global_config.ini');
    await writeFile(
      config,
      [
        '[PACKAGES]',
        `upload_location: ${builtin}`,
        `custom_upload_location: ${path.join(www, 'custom')}`,
        `client_dir: ${EXAMPLE}`,
        'minimum_free_space: 0',
        '[SERVER]',
        'port: 0',
        `log_level: ${process.env.BENCH_LOG_LEVEL ?? 'info'}`,
        '',
      ].join('\n'),
    );
    execFileSync(process.execPath, [CLI, 'packager', 'upload', '--all', '-f', big, '--config', config], {
      env: { ...process.env, AUTOTEST_CACHE_DIR: path.join(work, 'cache') },
      stdio: 'ignore',
    });
    // The index as a real repository has it, whatever the example client holds.
    const checksumBody = realSizeChecksum();
    await writeFile(path.join(builtin, 'packages.checksum'), checksumBody);

    // Our log goes to a file, as nginx's access log does (a pipe read by this process would
    // make the comparison about this process).
    const logFile = path.join(work, 'autotest-access.log');
    const logFd = openSync(logFile, 'a');
    const ours = spawn(process.execPath, [CLI, 'serve', '--config', config], { stdio: ['ignore', logFd, 'ignore'] });
    let oursUrl = '';
    for (let i = 0; i < 100 && oursUrl === ''; i += 1) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      oursUrl = /at (http:\/\/[^/\s]+)\/packages\/builtin\//.exec(await readFile(logFile, 'utf8'))?.[1] ?? '';
    }
    if (oursUrl === '') throw new Error(`autotest serve did not start: ${await readFile(logFile, 'utf8')}`);
    const nginx = await startNginx({
      root: work,
      workerProcesses: 'auto',
      workerConnections: 4096,
      extraLocations: `location /packages/ { alias ${www}/; autoindex on; }`,
    });
    try {
      const checksumUrl = (base: string): string => `${base}/packages/builtin/packages.checksum`;
      const packageUrl = (base: string): string => `${base}/packages/builtin/kernel-5m.img`;
      // A short warm-up of each, then the measured runs, alternately so that drift hits both.
      wrk(checksumUrl(oursUrl), 100);
      wrk(checksumUrl(nginx.url), 100);
      const oursRates: number[] = [];
      const nginxRates: number[] = [];
      const ratios: number[] = [];
      for (let run = 0; run < RUNS; run += 1) {
        const a = wrk(checksumUrl(oursUrl), 100).requestsPerSecond;
        const b = wrk(checksumUrl(nginx.url), 100).requestsPerSecond;
        oursRates.push(a);
        nginxRates.push(b);
        ratios.push(a / b);
      }
      wrk(packageUrl(oursUrl), 10);
      wrk(packageUrl(nginx.url), 10);
      const pkg: [WrkResult, WrkResult] = [wrk(packageUrl(oursUrl), 10), wrk(packageUrl(nginx.url), 10)];
      const idleRss = await peakRssMb(ours.pid ?? 0);
      const heavy = wrk(checksumUrl(oursUrl), 1000);
      const peak = await peakRssMb(ours.pid ?? 0);
      const spread = (values: number[], digits: number): string =>
        `${Math.min(...values).toFixed(digits)} / ${median(values).toFixed(digits)} / ${Math.max(...values).toFixed(digits)}`;
      console.log(`autotest serve vs nginx (worker_processes auto), wrk -t2 ${SECONDS.toString()} s runs on loopback, 2 cores:`);
      console.log(
        `  packages.checksum (${CHECKSUM_ENTRIES.toString()} entries, ${(Buffer.byteLength(checksumBody) / 1024).toFixed(1)} KB), 100 connections, ${RUNS.toString()} runs each, min / median / max:`,
      );
      console.log(`    ours  ${spread(oursRates, 0)} req/s`);
      console.log(`    nginx ${spread(nginxRates, 0)} req/s`);
      console.log(`    ratio ${spread(ratios, 2)}x (each run against the nginx run after it; target >= 0.6x)`);
      console.log(
        `  5 MB package, 10 connections:       ours ${(pkg[0].bytesPerSecond / 1e6).toFixed(0)} MB/s, nginx ${(pkg[1].bytesPerSecond / 1e6).toFixed(0)} MB/s, ratio ${(pkg[0].bytesPerSecond / pkg[1].bytesPerSecond).toFixed(2)}x (target >= 0.7x)`,
      );
      console.log(
        `  1,000 connections on packages.checksum: ours ${heavy.requestsPerSecond.toFixed(0)} req/s; peak RSS ${peak.toFixed(0)} MB (before: ${idleRss.toFixed(0)} MB; target <= 150 MB)`,
      );
    } finally {
      ours.kill('SIGTERM');
      await nginx.stop();
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

await main();
