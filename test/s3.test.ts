import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { parseChecksumFile, parseManifest, type IndexEntry, type RepositoryIndex } from '../src/packages/index.js';
import { awsEnv, startRadosgw, type Radosgw } from './fixtures/radosgw.js';
import { copyExampleTree, generateTree, runCli, tempDir, type CliResult } from './helpers.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';

/** Everything any command of this file printed: checked for the secret key at the end of each test. */
interface Lab {
  s3: Radosgw;
  admin: S3Client;
  outputs: string[];
  cli(args: string[], cwd: string, env?: NodeJS.ProcessEnv): Promise<CliResult>;
}

async function startLab(t: TestContext): Promise<Lab> {
  const s3 = await startRadosgw();
  t.after(() => s3.stop());
  const admin = new S3Client({
    endpoint: s3.endpoint, region: s3.region, forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKey, secretAccessKey: s3.secretKey },
    requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED',
  });
  t.after(() => { admin.destroy(); });
  const outputs: string[] = [];
  t.after(() => {
    for (const output of outputs) assert.ok(!output.includes(s3.secretKey), 'the S3 secret key appeared in a command output');
  });
  return {
    s3, admin, outputs,
    async cli(args, cwd, env = {}) {
      const result = await runCli(args, { cwd, env: awsEnv(s3, env) });
      outputs.push(result.stdout, result.stderr);
      return result;
    },
  };
}

/** A config with [PACKAGES] keys and an [S3] section pointing at the test radosgw (or `endpoint`). */
async function writeS3Config(dir: string, lab: Lab, packages: Record<string, string>, extra = '', name = 'global_config.ini'): Promise<string> {
  const file = path.join(dir, name);
  const lines = ['[PACKAGES]', ...Object.entries(packages).map(([k, v]) => `${k}: ${v}`), '',
    '[S3]', `endpoint: ${lab.s3.endpoint}`, 'region: us-east-1', 'path_style: true', 'checksum_mode: when_required', '', extra];
  await writeFile(file, lines.join('\n'));
  return file;
}

async function getObject(admin: S3Client, bucket: string, key: string): Promise<Buffer | undefined> {
  try {
    const answer = await admin.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    return Buffer.from(await answer.Body?.transformToByteArray() ?? []);
  } catch (error) {
    if (error instanceof Error && error.name === 'NoSuchKey') return undefined;
    throw error;
  }
}

async function listKeys(admin: S3Client, bucket: string, prefix: string): Promise<string[]> {
  const answer = await admin.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `${prefix}/` }));
  return (answer.Contents ?? []).map((object) => (object.Key ?? '').slice(prefix.length + 1)).sort();
}

/**
 * The invariant of an S3 repository: every entry of packages.checksum and packages.json names
 * an object with exactly its md5, sha256 and size, and the two files list the same packages.
 */
async function checkS3Consistency(admin: S3Client, bucket: string, prefix: string): Promise<{ checksums: Map<string, string>; problems: string[] }> {
  const problems: string[] = [];
  const checksumText = (await getObject(admin, bucket, `${prefix}/packages.checksum`))?.toString('utf8') ?? '';
  const manifestText = (await getObject(admin, bucket, `${prefix}/packages.json`))?.toString('utf8');
  const checksums = parseChecksumFile(checksumText, 'packages.checksum');
  const manifest: RepositoryIndex = manifestText === undefined ? new Map<string, IndexEntry>() : parseManifest(manifestText, 'packages.json');
  if ([...checksums.keys()].sort().join() !== [...manifest.keys()].sort().join()) problems.push('packages.checksum and packages.json list different packages');
  for (const [file, md5] of checksums) {
    const body = await getObject(admin, bucket, `${prefix}/${file}`);
    if (!body) {
      problems.push(`${file}: indexed, no object`);
      continue;
    }
    if (createHash('md5').update(body).digest('hex') !== md5) problems.push(`${file}: md5 differs from packages.checksum`);
    const entry = manifest.get(file);
    if (entry && (entry.sha256 !== createHash('sha256').update(body).digest('hex') || entry.size !== body.length)) problems.push(`${file}: sha256/size differ from packages.json`);
  }
  return { checksums, problems };
}

test('upload --all publishes the example tree to a local folder and an S3 prefix at once with the same index; replace, list, verify --repair, remove and upkeep work on S3', async (t) => {
  const lab = await startLab(t);
  const dir = await tempDir(t);
  await lab.admin.send(new CreateBucketCommand({ Bucket: 'lab-packages' }));
  const clientDir = await copyExampleTree(dir);
  const local = path.join(dir, 'local');
  const config = await writeS3Config(dir, lab, {
    upload_location: `${local}, s3://lab-packages/autotest/builtin`,
    custom_upload_location: 's3://lab-packages/autotest/custom',
    client_dir: clientDir, minimum_free_space: '0', custom_max_age: '0',
  });
  const upload = await lab.cli(['packager', 'upload', '--all', '--config', config], dir);
  assert.equal(upload.code, 0, upload.stdout + upload.stderr);
  assert.match(upload.stdout, /s3:\/\/lab-packages\/autotest\/builtin.*published 6/);

  const { checksums, problems } = await checkS3Consistency(lab.admin, 'lab-packages', 'autotest/builtin');
  assert.deepEqual(problems, []);
  assert.equal(checksums.size, 6);
  assert.equal((await getObject(lab.admin, 'lab-packages', 'autotest/builtin/packages.checksum'))?.toString('utf8'), await readFile(path.join(local, 'packages.checksum'), 'utf8'),
    'the local and the S3 packages.checksum are the same');
  assert.deepEqual((await listKeys(lab.admin, 'lab-packages', 'autotest/builtin')).filter((key) => key.startsWith('.')), [], 'no temp or probe object is left');

  // A changed test replaces its object through a temp key and a server-side copy.
  await writeFile(path.join(clientDir, 'tests', 'hello', 'changed.txt'), 'a change\n');
  const again = await lab.cli(['packager', 'upload', '--all', '--config', config], dir);
  assert.equal(again.code, 0, again.stdout + again.stderr);
  assert.match(again.stdout, /s3:\/\/lab-packages\/autotest\/builtin.*published 1/);
  assert.deepEqual((await checkS3Consistency(lab.admin, 'lab-packages', 'autotest/builtin')).problems, []);
  assert.deepEqual((await listKeys(lab.admin, 'lab-packages', 'autotest/builtin')).filter((key) => key.startsWith('.')), []);

  const list = await lab.cli(['packager', 'list', '--json', '--config', config], dir);
  assert.equal(list.code, 0, list.stderr);
  const listed = JSON.parse(list.stdout) as { location: string; packages: { file: string }[] }[];
  assert.equal(listed.find((l) => l.location.startsWith('s3://'))?.packages.length, 6);

  await lab.admin.send(new PutObjectCommand({ Bucket: 'lab-packages', Key: 'autotest/builtin/test-hello.tar.bz2', Body: 'corrupt' }));
  const verify = await lab.cli(['packager', 'verify', '--config', config], dir);
  assert.equal(verify.code, 1, verify.stdout);
  assert.match(verify.stdout, /s3:\/\/lab-packages\/autotest\/builtin[\s\S]*test-hello\.tar\.bz2/);
  const repair = await lab.cli(['packager', 'verify', '--repair', '--config', config], dir);
  assert.equal(repair.code, 0, repair.stdout + repair.stderr);
  assert.deepEqual((await checkS3Consistency(lab.admin, 'lab-packages', 'autotest/builtin')).problems, []);
  assert.equal((await checkS3Consistency(lab.admin, 'lab-packages', 'autotest/builtin')).checksums.size, 6);

  const remove = await lab.cli(['packager', 'remove', '-t', 'hello', '--config', config], dir);
  assert.equal(remove.code, 0, remove.stdout + remove.stderr);
  const afterRemove = await checkS3Consistency(lab.admin, 'lab-packages', 'autotest/builtin');
  assert.deepEqual(afterRemove.problems, []);
  assert.equal(afterRemove.checksums.has('test-hello.tar.bz2'), false);
  assert.equal(await getObject(lab.admin, 'lab-packages', 'autotest/builtin/test-hello.tar.bz2'), undefined);

  // upkeep on an S3 custom location: custom_max_age 0 expires everything published before now.
  const kernel = path.join(dir, 'kernel-6.1.img');
  await writeFile(kernel, 'kernel image\n');
  const custom = await lab.cli(['packager', 'upload', '-f', kernel, '-r', 's3://lab-packages/autotest/custom', '--config', config], dir);
  assert.equal(custom.code, 0, custom.stdout + custom.stderr);
  assert.ok(await getObject(lab.admin, 'lab-packages', 'autotest/custom/kernel-6.1.img'));
  await new Promise((resolve) => setTimeout(resolve, 1100));
  const upkeep = await lab.cli(['packager', 'upkeep', '--config', config], dir);
  assert.equal(upkeep.code, 0, upkeep.stdout + upkeep.stderr);
  assert.match(upkeep.stdout, /kernel-6\.1\.img/);
  assert.equal(await getObject(lab.admin, 'lab-packages', 'autotest/custom/kernel-6.1.img'), undefined);
  assert.equal((await checkS3Consistency(lab.admin, 'lab-packages', 'autotest/custom')).checksums.size, 0);
});

test('20 concurrent single-package uploads to one S3 prefix leave 20 index entries, each with its object', async (t) => {
  const lab = await startLab(t);
  const dir = await tempDir(t);
  await lab.admin.send(new CreateBucketCommand({ Bucket: 'lab-packages' }));
  const clientDir = await generateTree(dir, 20, 2000);
  const config = await writeS3Config(dir, lab, { upload_location: 's3://lab-packages/concurrent', client_dir: clientDir, minimum_free_space: '0' });
  const names = Array.from({ length: 20 }, (_, i) => `t${String(i).padStart(3, '0')}`);
  const results = await Promise.all(names.map((name) => lab.cli(['packager', 'upload', '-t', name, '--config', config], dir)));
  for (const result of results) assert.equal(result.code, 0, result.stdout + result.stderr);
  const { checksums, problems } = await checkS3Consistency(lab.admin, 'lab-packages', 'concurrent');
  assert.deepEqual(problems, []);
  assert.deepEqual([...checksums.keys()].sort(), names.map((name) => `test-${name}.tar.bz2`));
});

test('a 200 MB file goes up to S3 in parts, and the packager holds no more memory for it than for a small file', async (t) => {
  const lab = await startLab(t);
  const dir = await tempDir(t);
  await lab.admin.send(new CreateBucketCommand({ Bucket: 'lab-packages' }));
  const config = await writeS3Config(dir, lab, { upload_location: 's3://lab-packages/big', minimum_free_space: '0' }, 'part_size: 8\nupload_concurrency: 2\n');
  // Each run writes its peak RSS (KiB) where RSS_REPORT says, when it exits.
  const reporter = path.join(dir, 'report-rss.mjs');
  await writeFile(reporter, "import { writeFileSync } from 'node:fs';\nprocess.on('exit', () => { writeFileSync(process.env.RSS_REPORT, String(process.resourceUsage().maxRSS)); });\n");
  const peak = async (file: string): Promise<number> => {
    const report = path.join(dir, `${path.basename(file)}.rss`);
    const result = await lab.cli(['packager', 'upload', '-f', file, '--config', config], dir, { NODE_OPTIONS: `--import=${reporter}`, RSS_REPORT: report });
    assert.equal(result.code, 0, result.stdout + result.stderr);
    return Number(await readFile(report, 'utf8')) * 1024;
  };
  const small = path.join(dir, 'small.img');
  await writeFile(small, 'x'.repeat(1000));
  const big = path.join(dir, 'big.img');
  const chunk = Buffer.alloc(1024 * 1024);
  const handle = await import('node:fs/promises').then((fs) => fs.open(big, 'w'));
  for (let i = 0; i < 200; i++) {
    chunk.fill(i);
    chunk.writeUInt32LE(i, 0);
    await handle.write(chunk);
  }
  await handle.close();

  const smallPeak = await peak(small);
  const bigPeak = await peak(big);
  t.diagnostic(`peak RSS: ${(smallPeak / 2 ** 20).toFixed(0)} MiB for 1 kB, ${(bigPeak / 2 ** 20).toFixed(0)} MiB for 200 MiB`);
  assert.ok(bigPeak - smallPeak < 64 * 2 ** 20, `the 200 MiB upload took ${((bigPeak - smallPeak) / 2 ** 20).toFixed(0)} MiB more than a small one (bound: 64 MiB = 8 MiB parts x 2 in flight + slack)`);

  const head = await lab.admin.send(new HeadObjectCommand({ Bucket: 'lab-packages', Key: 'big/big.img' }));
  assert.equal(head.ContentLength, 200 * 2 ** 20);
  assert.match(head.ETag ?? '', /-25"?$/, 'a multipart ETag of 25 parts of 8 MiB');
  assert.deepEqual((await checkS3Consistency(lab.admin, 'lab-packages', 'big')).problems, []);
  await lab.admin.send(new DeleteObjectCommand({ Bucket: 'lab-packages', Key: 'big/big.img' }));
});
