/**
 * Verified fetches in a process of their own, printing the best wall time and its CPU seconds
 * as JSON: bench/s3.ts measures our fetch here because its own process has the full AWS SDK
 * loaded (to create the bucket and presign curl's URL), which slows every download of a
 * process. The first fetch warms the process (JIT, hashing thread), as in bench/fetch.
 * Usage: node fetch-once.js '{"location": "...", "s3": {...S3Settings}, "file": "...", "dest": "...", "runs": 5}'
 */
import { rm } from 'node:fs/promises';
import { parseLocation, type S3Settings } from '../src/config/index.js';
import { PackageFetcher } from '../src/fetch/index.js';
import { Resources } from '../src/resources.js';

interface Request {
  location: string;
  s3: S3Settings;
  file: string;
  dest: string;
  runs?: number;
}

const request = JSON.parse(process.argv[2] ?? '{}') as Request;
const location = parseLocation(request.location, process.cwd(), () => request.s3);
let best = { seconds: Infinity, cpuSeconds: 0 };
// One Resources for every run, as the process held them before each command had its own.
const resources = new Resources();
for (let run = 0; run <= (request.runs ?? 1); run += 1) {
  await rm(request.dest, { force: true });
  const cpu = process.cpuUsage();
  const started = performance.now();
  const fetcher = await PackageFetcher.create(
    [location],
    { connectTimeoutMs: 5000, timeoutMs: 600_000, retries: 2, cooldownMs: 0, maxSizeBytes: 1e10 },
    { resources },
  );
  await fetcher.fetch(request.file, request.dest);
  await fetcher.close();
  const seconds = (performance.now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  if (run > 0 && seconds < best.seconds) best = { seconds, cpuSeconds: (used.user + used.system) / 1e6 };
}
await resources.close();
console.log(JSON.stringify(best));
