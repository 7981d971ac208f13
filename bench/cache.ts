/**
 * Benchmark: the caching front against nginx `proxy_cache` + `proxy_cache_lock on`, both in
 * front of the same slow upstream (nginx serving a 32 MB package at `limit_rate` 10 MB/s per
 * connection), in one run. 50 clients ask for the package at once through each front (each
 * with an empty cache, the index asked for once before); printed for both: upstream GETs and
 * bytes of the package (from the upstream's access log), total time, median and p95 of the
 * first byte and of completion, and the front's peak RSS; then our figures as ratios of
 * nginx's. Bounded: one package, 50 clients, every phase cut after 120 s.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatChecksumFile, formatManifest, type RepositoryIndex } from '../src/packages/index.js';
import { startNginx, type NginxServer } from '../test/fixtures/nginx.js';
import { startDaemon } from '../test/fixtures/process.js';

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/cli/main.js');
const PACKAGE = 'kernel-32m.img';
const PACKAGE_BYTES = 32 * 1024 * 1024;
const CLIENTS = 50;
const UPSTREAM_RATE = '10m';
const PHASE_LIMIT_MS = 120_000;

interface ClientTimes {
  firstByteMs: number;
  doneMs: number;
  sha256: string;
}

interface FrontResult {
  upstreamGets: number;
  upstreamBytes: number;
  totalMs: number;
  firstByte: { median: number; p95: number };
  done: { median: number; p95: number };
  peakRssMb: number | undefined;
  wrong: number;
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN;
}

/** One GET, timed from `start`: when its first body byte and its last arrived. */
function timedGet(url: string, start: number): Promise<ClientTimes> {
  return new Promise((resolve, reject) => {
    const request = http.get(url, { agent: false }, (response) => {
      if (response.statusCode !== 200) {
        response.resume();
        reject(new Error(`${url}: ${String(response.statusCode)}`));
        return;
      }
      const hash = createHash('sha256');
      let firstByteMs = Number.NaN;
      response.on('data', (chunk: Buffer) => {
        if (Number.isNaN(firstByteMs)) firstByteMs = performance.now() - start;
        hash.update(chunk);
      });
      response.on('end', () => {
        resolve({ firstByteMs, doneMs: performance.now() - start, sha256: hash.digest('hex') });
      });
      response.on('error', reject);
    });
    request.setTimeout(PHASE_LIMIT_MS, () => request.destroy(new Error(`${url}: over ${String(PHASE_LIMIT_MS / 1000)} s`)));
    request.on('error', reject);
  });
}

/** GETs of the package and their body bytes in the upstream's access log (combined format). */
async function upstreamLog(upstream: NginxServer): Promise<{ gets: number; bytes: number }> {
  const lines = (await readFile(upstream.accessLog, 'utf8')).split('\n').filter((line) => line.includes(`"GET /${PACKAGE} `));
  return { gets: lines.length, bytes: lines.reduce((sum, line) => sum + Number(/" \d{3} (\d+) /.exec(line)?.[1] ?? 0), 0) };
}

async function peakRssMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid.toString()}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1]) / 1024;
}

/** 50 clients at once through `front`; the upstream's log read before and after. */
async function measure(front: string, upstream: NginxServer, digest: string, pid: number | undefined): Promise<FrontResult> {
  // The index first, once, as a lab's clients read it before their packages.
  await new Promise<void>((resolve, reject) => {
    http
      .get(`${front}/packages.checksum`, { agent: false }, (response) => {
        response.resume().on('end', resolve);
      })
      .on('error', reject);
  });
  const before = await upstreamLog(upstream);
  const start = performance.now();
  const times = await Promise.all(Array.from({ length: CLIENTS }, () => timedGet(`${front}/${PACKAGE}`, start)));
  const totalMs = performance.now() - start;
  const after = await upstreamLog(upstream);
  return {
    upstreamGets: after.gets - before.gets,
    upstreamBytes: after.bytes - before.bytes,
    totalMs,
    firstByte: {
      median: percentile(
        times.map((t) => t.firstByteMs),
        50,
      ),
      p95: percentile(
        times.map((t) => t.firstByteMs),
        95,
      ),
    },
    done: {
      median: percentile(
        times.map((t) => t.doneMs),
        50,
      ),
      p95: percentile(
        times.map((t) => t.doneMs),
        95,
      ),
    },
    peakRssMb: pid === undefined ? undefined : await peakRssMb(pid),
    wrong: times.filter((t) => t.sha256 !== digest).length,
  };
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(2)} s`;
}

async function main(): Promise<void> {
  const work = await mkdtemp(path.join(tmpdir(), 'autotest-bench-cache-'));
  const stops: (() => Promise<void>)[] = [];
  try {
    const www = path.join(work, 'www');
    await mkdir(www);
    const body = randomBytes(PACKAGE_BYTES);
    const digest = createHash('sha256').update(body).digest('hex');
    await writeFile(path.join(www, PACKAGE), body);
    const index: RepositoryIndex = new Map([
      [PACKAGE, { file: PACKAGE, md5: createHash('md5').update(body).digest('hex'), sha256: digest, size: body.length }],
    ]);
    await writeFile(path.join(www, 'packages.checksum'), formatChecksumFile(index));
    await writeFile(path.join(www, 'packages.json'), formatManifest(index));

    const upstream = await startNginx({ root: www, extraLocations: `    location / { limit_rate ${UPSTREAM_RATE}; }` });
    stops.push(() => upstream.stop());

    const cacheDir = path.join(work, 'ours-cache');
    const config = path.join(work, 'global_config.ini');
    await writeFile(config, ['[SERVER]', `builtin_dir: ${upstream.url}`, `cache_dir: ${cacheDir}`, 'log_level: warn', ''].join('\n'));
    const ours = await startDaemon({
      name: 'autotest serve',
      command: process.execPath,
      host: '127.0.0.1',
      cwd: work,
      env: { ...process.env, AUTOTEST_CACHE_DIR: path.join(work, 'client-cache'), AUTOTEST_CONFIG: '' },
      prepare: (port) => [CLI, 'serve', '--config', config, '--port', port.toString()],
    });
    stops.push(() => ours.stop());

    const nginxCache = path.join(work, 'nginx-cache');
    await mkdir(nginxCache);
    const reference = await startNginx({
      root: www,
      httpDirectives: `  proxy_cache_path ${nginxCache} levels=1:2 keys_zone=bench:10m max_size=1g inactive=60m use_temp_path=off;`,
      // The lock held as long as the download lasts: every waiting request gets the cached copy.
      extraLocations: [
        '    location /packages/builtin/ {',
        `      proxy_pass ${upstream.url}/;`,
        '      proxy_http_version 1.1;',
        '      proxy_set_header Connection "";',
        '      proxy_cache bench;',
        '      proxy_cache_lock on;',
        '      proxy_cache_lock_timeout 120s;',
        '      proxy_cache_lock_age 120s;',
        '      proxy_cache_valid 200 10m;',
        '    }',
      ].join('\n'),
    });
    stops.push(() => reference.stop());

    console.log(
      `caching fronts: ${String(CLIENTS)} clients at once, one ${String(PACKAGE_BYTES / 1024 / 1024)} MB package, upstream nginx at limit_rate ${UPSTREAM_RATE}/s, empty caches`,
    );
    const nginxResult = await measure(`${reference.url}/packages/builtin`, upstream, digest, undefined);
    const oursResult = await measure(`http://127.0.0.1:${ours.port.toString()}/packages/builtin`, upstream, digest, ours.pid);

    const rows: [string, (r: FrontResult) => string, (a: FrontResult, b: FrontResult) => string][] = [
      ['upstream GETs', (r) => r.upstreamGets.toString(), (a, b) => `${(a.upstreamGets / b.upstreamGets).toFixed(2)}x`],
      ['upstream MB', (r) => (r.upstreamBytes / 1024 / 1024).toFixed(1), (a, b) => `${(a.upstreamBytes / b.upstreamBytes).toFixed(2)}x`],
      ['total time', (r) => seconds(r.totalMs), (a, b) => `${(a.totalMs / b.totalMs).toFixed(2)}x`],
      ['first byte, median', (r) => seconds(r.firstByte.median), (a, b) => `${(a.firstByte.median / b.firstByte.median).toFixed(3)}x`],
      ['first byte, p95', (r) => seconds(r.firstByte.p95), (a, b) => `${(a.firstByte.p95 / b.firstByte.p95).toFixed(3)}x`],
      ['completion, median', (r) => seconds(r.done.median), (a, b) => `${(a.done.median / b.done.median).toFixed(2)}x`],
      ['completion, p95', (r) => seconds(r.done.p95), (a, b) => `${(a.done.p95 / b.done.p95).toFixed(2)}x`],
      ['front peak RSS', (r) => (r.peakRssMb === undefined ? '-' : `${r.peakRssMb.toFixed(0)} MB`), () => ''],
      ['wrong bodies', (r) => r.wrong.toString(), () => ''],
    ];
    console.log('| measure | ours | nginx proxy_cache_lock | ours / nginx |');
    console.log('| --- | --- | --- | --- |');
    for (const [label, show, ratio] of rows) console.log(`| ${label} | ${show(oursResult)} | ${show(nginxResult)} | ${ratio(oursResult, nginxResult)} |`);
    if (oursResult.wrong > 0 || nginxResult.wrong > 0) process.exitCode = 1;
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  }
}

await main();
