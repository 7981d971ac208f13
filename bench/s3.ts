/**
 * Benchmark, S3 (a real Ceph radosgw on loopback, memstore), ratios in one run:
 * - `autotest packager upload --all` of the generated benchmark tree to an S3 prefix against
 *   the same to a local folder (cold: empty location and pack cache each time);
 * - the client's fetch of a 200 MB package (index read, sha256 verified, renamed) from
 *   radosgw directly and through `autotest serve` in front of it, against `curl -o` of the
 *   same object by a presigned URL.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { time, writeRandom } from './timing.js';
import { fileURLToPath } from 'node:url';
import { CreateBucketCommand, GetObjectCommand } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import type { S3Settings } from '../src/config/index.js';
import { startDaemon } from '../test/fixtures/process.js';
import { adminClient, awsEnv, startRadosgw } from '../test/fixtures/radosgw.js';
import { generate } from './tree.js';

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/cli/main.js');
const FETCH_ONCE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), 'fetch-once.js');
const SIZE = 200 * 1024 * 1024;
const UPLOAD_RUNS = 3;
const FETCH_RUNS = 5;

const best = (values: number[]): number => Math.min(...values);

async function main(): Promise<void> {
  const work = await mkdtemp(path.join(tmpdir(), 'autotest-bench-s3-'));
  const s3 = await startRadosgw();
  Object.assign(process.env, awsEnv(s3));
  delete process.env.AWS_PROFILE;
  const env = { ...process.env, AUTOTEST_CACHE_DIR: path.join(work, 'cache') };
  const settings: S3Settings = {
    endpoint: s3.endpoint,
    region: s3.region,
    pathStyle: true,
    checksumMode: 'when_required',
    profile: undefined,
    partSizeBytes: 16 * 2 ** 20,
    uploadConcurrency: 4,
  };
  const s3Section = `[S3]\nendpoint: ${s3.endpoint}\npath_style: true\nchecksum_mode: when_required\n`;
  const admin = adminClient(s3);
  try {
    await admin.send(new CreateBucketCommand({ Bucket: 'bench' }));

    // upload --all: local folder against S3 prefix, each cold.
    const client = path.join(work, 'client');
    const { bytes } = await generate(client);
    execFileSync('sh', ['-c', `cat $(find "${client}" -type f) > /dev/null`]);
    const local: number[] = [];
    const remote: number[] = [];
    for (let i = 0; i < UPLOAD_RUNS; i += 1) {
      const localConfig = path.join(work, `local-${i.toString()}.ini`);
      await writeFile(localConfig, `[PACKAGES]\nupload_location: ${path.join(work, `repo-${i.toString()}`)}\nclient_dir: ${client}\nminimum_free_space: 0\n`);
      const s3Config = path.join(work, `s3-${i.toString()}.ini`);
      await writeFile(s3Config, `[PACKAGES]\nupload_location: s3://bench/upload-${i.toString()}\nclient_dir: ${client}\nminimum_free_space: 0\n${s3Section}`);
      await rm(env.AUTOTEST_CACHE_DIR, { recursive: true, force: true });
      local.push(
        await time(() => {
          execFileSync(process.execPath, [CLI, 'packager', 'upload', '--all', '--config', localConfig], { env, stdio: 'ignore' });
        }),
      );
      await rm(env.AUTOTEST_CACHE_DIR, { recursive: true, force: true });
      remote.push(
        await time(() => {
          execFileSync(process.execPath, [CLI, 'packager', 'upload', '--all', '--config', s3Config], { env, stdio: 'ignore' });
        }),
      );
    }
    console.log(`upload --all of the benchmark tree (134 packages + client, ${(bytes / 1e6).toFixed(1)} MB), cold, best of ${UPLOAD_RUNS.toString()}:`);
    console.log(`  to a local folder               ${best(local).toFixed(2)} s`);
    console.log(`  to radosgw (s3://)              ${best(remote).toFixed(2)} s`);
    console.log(`  ratio S3/local: ${(best(remote) / best(local)).toFixed(2)}x`);

    // A 200 MB package on S3, fetched three ways.
    const big = path.join(work, 'kernel-200m.img');
    await writeRandom(big, SIZE);
    const bigConfig = path.join(work, 'big.ini');
    await writeFile(bigConfig, `[PACKAGES]\nupload_location: s3://bench/big\nminimum_free_space: 0\n${s3Section}`);
    const bigUpload = await time(() => {
      execFileSync(process.execPath, [CLI, 'packager', 'upload', '-f', big, '--config', bigConfig], { env, stdio: 'ignore' });
    });
    await rm(big);
    const serveConfig = path.join(work, 'serve.ini');
    await writeFile(serveConfig, `[PACKAGES]\nupload_location: s3://bench/big\n${s3Section}[SERVER]\nlisten_address: 127.0.0.1\nlog_level: warn\n`);
    const server = await startDaemon({
      name: 'autotest serve',
      command: process.execPath,
      host: '127.0.0.1',
      cwd: work,
      env,
      prepare: (port) => [CLI, 'serve', '--config', serveConfig, '--port', port.toString()],
    });
    try {
      const servedUrl = `http://127.0.0.1:${server.port.toString()}/packages/builtin`;
      const presigned = await getSignedUrl(admin, new GetObjectCommand({ Bucket: 'bench', Key: 'big/kernel-200m.img' }), { expiresIn: 3600 });
      const out = path.join(work, 'out');
      await mkdir(out);
      // The presigned URL goes to curl on stdin (-K -): never on a command line (ps) or in an error message.
      const curlConfig = `url = "${presigned}"\n`;
      const curlOnce = (): void => {
        execFileSync('curl', ['-sf', '-o', path.join(out, 'curl.img'), '-K', '-'], { input: curlConfig });
      };
      // What a verified download costs with the usual tools: the same, then sha256sum of the file.
      const curlVerified = (): void => {
        curlOnce();
        execFileSync('sha256sum', [path.join(out, 'curl.img')], { stdio: 'ignore' });
      };
      // Our fetch runs in a process of its own (fetch-once.ts): this one has the full SDK loaded.
      const fetchOnce = async (location: string, name: string): Promise<{ seconds: number; cpuSeconds: number }> => {
        await rm(path.join(out, name), { force: true });
        const request = JSON.stringify({ location, s3: settings, file: 'kernel-200m.img', dest: path.join(out, name), runs: FETCH_RUNS });
        return JSON.parse(execFileSync(process.execPath, [FETCH_ONCE, request], { env, encoding: 'utf8' })) as { seconds: number; cpuSeconds: number };
      };
      curlOnce();
      const curlServed = (): void => {
        execFileSync('curl', ['-sf', '-o', path.join(out, 'curl-served.img'), `${servedUrl}/kernel-200m.img`]);
      };
      const curl: number[] = [];
      const curlThrough: number[] = [];
      const curlSum: number[] = [];
      const ours: number[] = [];
      const through: number[] = [];
      for (let i = 0; i < FETCH_RUNS; i += 1) {
        await rm(path.join(out, 'curl.img'), { force: true });
        curl.push(await time(curlOnce));
        await rm(path.join(out, 'curl.img'), { force: true });
        curlSum.push(await time(curlVerified));
        await rm(path.join(out, 'curl-served.img'), { force: true });
        curlThrough.push(await time(curlServed));
      }
      // Ours: best of FETCH_RUNS in one warm process each way.
      const direct = await fetchOnce('s3://bench/big', 'direct.img');
      ours.push(direct.seconds);
      through.push((await fetchOnce(servedUrl, 'served.img')).seconds);
      // CPU seconds of one download each way: on 2 cores shared with radosgw, wall time follows them.
      const curlCpu = execFileSync('bash', ['-c', 'TIMEFORMAT="%U %S"; { time curl -sf -o "$1" -K - ; } 2>&1', 'bash', path.join(out, 'curl.img')], {
        encoding: 'utf8',
        input: curlConfig,
      })
        .trim()
        .split(/\s+/)
        .map(Number)
        .reduce((a, b) => a + b, 0);
      const oursCpu = direct.cpuSeconds;
      const mb = SIZE / 1e6;
      const line = (label: string, seconds: number): string => `  ${label.padEnd(40)} ${seconds.toFixed(3)} s  ${(mb / seconds).toFixed(0)} MB/s`;
      console.log(`200 MiB package: upload -f to radosgw ${bigUpload.toFixed(2)} s (${(mb / bigUpload).toFixed(0)} MB/s, 16 MiB parts x 4)`);
      console.log(`fetch of the 200 MiB package from radosgw (best of ${FETCH_RUNS.toString()}):`);
      console.log(line('curl -o, presigned URL', best(curl)));
      console.log(line('curl -o, presigned URL, then sha256sum', best(curlSum)));
      console.log(line('curl -o through autotest serve', best(curlThrough)));
      console.log(line('ours, s3:// direct (sha256 verified)', best(ours)));
      console.log(line('ours, through autotest serve (verified)', best(through)));
      console.log(`  CPU for one download: curl ${curlCpu.toFixed(2)} s, ours direct ${oursCpu.toFixed(2)} s (sha256 and the hashing thread included)`);
      console.log(`  throughput ratio vs curl: direct ${(best(curl) / best(ours)).toFixed(2)}x, through serve ${(best(curl) / best(through)).toFixed(2)}x`);
      console.log(
        `  throughput ratio vs curl + sha256sum: direct ${(best(curlSum) / best(ours)).toFixed(2)}x, through serve ${(best(curlSum) / best(through)).toFixed(2)}x`,
      );
    } finally {
      await server.stop();
    }
  } finally {
    admin.destroy();
    await s3.stop();
    await rm(work, { recursive: true, force: true });
  }
}

await main();
