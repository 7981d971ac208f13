import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
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
import { DEFAULT_S3_SETTINGS, parseLocation, type S3Settings } from '../src/config/index.js';
import { objectUrl } from '../src/repositories/s3/sign.js';
import { freePort, runChecked, startDaemon } from './fixtures/process.js';
import { adminClient, awsEnv, startRadosgw, type Radosgw } from './fixtures/radosgw.js';
import { CLI, ROOT, copyExampleTree, generateTree, runCli, tempDir, type CliResult } from './helpers.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';

/** Everything any command of this file printed: checked for the secret key at the end of each test. */
interface Lab {
  s3: Radosgw;
  admin: S3Client;
  outputs: string[];
  cli(args: string[], cwd: string, env?: NodeJS.ProcessEnv): Promise<CliResult>;
  /** Starts `autotest serve --config CONFIG` with the lab's keys; returns its address (http://127.0.0.1:PORT). */
  serve(config: string, cwd: string): Promise<string>;
}

async function startLab(t: TestContext): Promise<Lab> {
  const s3 = await startRadosgw();
  t.after(() => s3.stop());
  const admin = adminClient(s3);
  t.after(() => {
    admin.destroy();
  });
  const outputs: string[] = [];
  t.after(() => {
    for (const output of outputs) {
      assert.ok(!output.includes(s3.secretKey), 'the S3 secret key appeared in a command output');
      assert.doesNotMatch(output, /Are you using a Stream|NodeVersionSupportWarning/, 'no AWS SDK warning reaches the user');
    }
  });
  return {
    s3,
    admin,
    outputs,
    async cli(args, cwd, env = {}) {
      const result = await runCli(args, { cwd, env: awsEnv(s3, env) });
      outputs.push(result.stdout, result.stderr);
      return result;
    },
    async serve(config, cwd) {
      const server = await startDaemon({
        name: 'autotest serve',
        command: process.execPath,
        host: '127.0.0.1',
        cwd,
        env: { ...process.env, ...awsEnv(s3), AUTOTEST_CACHE_DIR: path.join(cwd, '.serve-cache') },
        prepare: (port) => [CLI, 'serve', '--config', config, '--port', port.toString()],
      });
      t.after(async () => {
        await server.stop();
        outputs.push(server.output());
      });
      return `http://127.0.0.1:${server.port.toString()}`;
    },
  };
}

/** A config with [PACKAGES] keys and an [S3] section pointing at the test radosgw (or `endpoint`). */
async function writeS3Config(dir: string, lab: Lab, packages: Record<string, string>, extra = '', name = 'global_config.ini'): Promise<string> {
  const file = path.join(dir, name);
  const lines = [
    '[PACKAGES]',
    ...Object.entries(packages).map(([k, v]) => `${k}: ${v}`),
    '',
    '[S3]',
    `endpoint: ${lab.s3.endpoint}`,
    'region: us-east-1',
    'path_style: true',
    'checksum_mode: when_required',
    '',
    extra,
  ];
  await writeFile(file, lines.join('\n'));
  return file;
}

async function getObject(admin: S3Client, bucket: string, key: string): Promise<Buffer | undefined> {
  try {
    const answer = await admin.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    return Buffer.from((await answer.Body?.transformToByteArray()) ?? []);
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
 * an object with exactly its md5, sha256 and size; after a run that was not killed, the two
 * files also list the same packages (a kill between their writes leaves packages.checksum a
 * step behind, with right entries, until the next run).
 */
async function checkS3Consistency(
  admin: S3Client,
  bucket: string,
  prefix: string,
  options = { sameLists: true },
): Promise<{ checksums: Map<string, string>; problems: string[] }> {
  const problems: string[] = [];
  const checksumText = (await getObject(admin, bucket, `${prefix}/packages.checksum`))?.toString('utf8') ?? '';
  const manifestText = (await getObject(admin, bucket, `${prefix}/packages.json`))?.toString('utf8');
  const checksums = parseChecksumFile(checksumText, 'packages.checksum');
  const manifest: RepositoryIndex = manifestText === undefined ? new Map<string, IndexEntry>() : parseManifest(manifestText, 'packages.json');
  if (options.sameLists && [...checksums.keys()].sort().join() !== [...manifest.keys()].sort().join())
    problems.push('packages.checksum and packages.json list different packages');
  for (const [file, md5] of checksums) {
    const body = await getObject(admin, bucket, `${prefix}/${file}`);
    if (!body) {
      problems.push(`${file}: indexed, no object`);
      continue;
    }
    if (createHash('md5').update(body).digest('hex') !== md5) problems.push(`${file}: md5 differs from packages.checksum`);
  }
  for (const entry of manifest.values()) {
    const body = await getObject(admin, bucket, `${prefix}/${entry.file}`);
    if (!body) {
      problems.push(`${entry.file}: in packages.json, no object`);
      continue;
    }
    if (entry.sha256 !== createHash('sha256').update(body).digest('hex') || entry.size !== body.length)
      problems.push(`${entry.file}: sha256/size differ from packages.json`);
  }
  return { checksums, problems };
}

test('S3 object URLs are path-style or virtual-hosted as configured, with AWS as the default endpoint and each key segment escaped once', () => {
  const at = (text: string, settings: Partial<S3Settings>): string => {
    const location = parseLocation(text, '/', () => ({ ...DEFAULT_S3_SETTINGS, ...settings }));
    assert.ok(location.kind === 's3');
    return objectUrl(location, 'test-a+b.tar.bz2').href;
  };
  assert.equal(
    at('s3://lab-packages/autotest/builtin', { endpoint: 'http://127.0.0.1:7480', pathStyle: true }),
    'http://127.0.0.1:7480/lab-packages/autotest/builtin/test-a%2Bb.tar.bz2',
  );
  assert.equal(
    at('s3://lab-packages/autotest', { endpoint: 'https://s3.lab.example', pathStyle: false }),
    'https://lab-packages.s3.lab.example/autotest/test-a%2Bb.tar.bz2',
  );
  assert.equal(at('s3://lab-packages', { region: 'eu-west-1' }), 'https://lab-packages.s3.eu-west-1.amazonaws.com/test-a%2Bb.tar.bz2');
});

test('upload --all publishes the example tree to a local folder and an S3 prefix at once, with the same packages and checksums in both indexes', async (t) => {
  const lab = await startLab(t);
  const dir = await tempDir(t);
  await lab.admin.send(new CreateBucketCommand({ Bucket: 'lab-packages' }));
  const clientDir = await copyExampleTree(dir);
  const local = path.join(dir, 'local');
  const config = await writeS3Config(dir, lab, {
    upload_location: `${local}, s3://lab-packages/autotest/builtin`,
    client_dir: clientDir,
    minimum_free_space: '0',
  });
  const upload = await lab.cli(['packager', 'upload', '--all', '--config', config], dir);
  assert.equal(upload.code, 0, upload.stdout + upload.stderr);
  assert.match(upload.stdout, /s3:\/\/lab-packages\/autotest\/builtin.*published 6/);

  const { checksums, problems } = await checkS3Consistency(lab.admin, 'lab-packages', 'autotest/builtin');
  assert.deepEqual(problems, []);
  assert.equal(checksums.size, 6);
  assert.equal(
    (await getObject(lab.admin, 'lab-packages', 'autotest/builtin/packages.checksum'))?.toString('utf8'),
    await readFile(path.join(local, 'packages.checksum'), 'utf8'),
    'the local and the S3 packages.checksum are the same',
  );
  assert.deepEqual(
    (await listKeys(lab.admin, 'lab-packages', 'autotest/builtin')).filter((key) => key.startsWith('.')),
    [],
    'no temp or probe object is left',
  );
});

test('on S3 a changed package is replaced, list shows the prefix, verify names a corrupt object and --repair republishes it, remove deletes one, and upkeep expires old custom files', async (t) => {
  const lab = await startLab(t);
  const dir = await tempDir(t);
  await lab.admin.send(new CreateBucketCommand({ Bucket: 'lab-packages' }));
  const clientDir = await copyExampleTree(dir);
  const config = await writeS3Config(dir, lab, {
    upload_location: 's3://lab-packages/autotest/builtin',
    custom_upload_location: 's3://lab-packages/autotest/custom',
    client_dir: clientDir,
    minimum_free_space: '0',
    custom_max_age: '0',
  });
  const upload = await lab.cli(['packager', 'upload', '--all', '--config', config], dir);
  assert.equal(upload.code, 0, upload.stdout + upload.stderr);

  // A changed test replaces its object through a temp key and a server-side copy.
  await writeFile(path.join(clientDir, 'tests', 'hello', 'changed.txt'), 'a change\n');
  const again = await lab.cli(['packager', 'upload', '--all', '--config', config], dir);
  assert.equal(again.code, 0, again.stdout + again.stderr);
  assert.match(again.stdout, /s3:\/\/lab-packages\/autotest\/builtin.*published 1/);
  assert.deepEqual((await checkS3Consistency(lab.admin, 'lab-packages', 'autotest/builtin')).problems, []);
  assert.deepEqual(
    (await listKeys(lab.admin, 'lab-packages', 'autotest/builtin')).filter((key) => key.startsWith('.')),
    [],
  );

  const list = await lab.cli(['packager', 'list', '--json', '--config', config], dir);
  assert.equal(list.code, 0, list.stderr);
  const listed = JSON.parse(list.stdout) as { location: string; packages: { file: string }[] }[];
  assert.deepEqual(
    listed.map((l) => [l.location, l.packages.length]),
    [
      ['s3://lab-packages/autotest/builtin', 6],
      ['s3://lab-packages/autotest/custom', 0],
    ],
  );

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
  assert.deepEqual(
    [...checksums.keys()].sort(),
    names.map((name) => `test-${name}.tar.bz2`),
  );
});

test('packagers publishing the same package with different bytes at once leave it indexed with the bytes of the object that stayed', async (t) => {
  const lab = await startLab(t);
  const dir = await tempDir(t);
  await lab.admin.send(new CreateBucketCommand({ Bucket: 'lab-packages' }));
  // Six trees with the same test name and different content, published at once, three rounds
  // (the first creates the package, the next ones replace it: direct PUTs, then temp keys and copies).
  const trees = await Promise.all(
    Array.from({ length: 6 }, async (_, i) => {
      const root = path.join(dir, `tree-${i.toString()}`);
      await mkdir(path.join(root, 'tests', 'shared'), { recursive: true });
      return root;
    }),
  );
  for (let round = 0; round < 3; round += 1) {
    await Promise.all(
      trees.map((root, i) =>
        writeFile(path.join(root, 'tests', 'shared', 'control'), `round ${round.toString()} tree ${i.toString()}\n${'x'.repeat(1000 * (i + 1))}`),
      ),
    );
    const results = await Promise.all(
      trees.map(async (root, i) => {
        const config = await writeS3Config(
          dir,
          lab,
          { upload_location: 's3://lab-packages/race', client_dir: root, minimum_free_space: '0' },
          '',
          `race-${i.toString()}.ini`,
        );
        return lab.cli(['packager', 'upload', '-t', 'shared', '--config', config], dir);
      }),
    );
    for (const result of results) {
      // Each either published or says that another packager's version stayed.
      if (result.code !== 0)
        assert.match(
          result.stdout + result.stderr,
          /test-shared\.tar\.bz2 was replaced or removed by another packager meanwhile[\s\S]*run the upload again if this version should win/,
        );
    }
    assert.ok(
      results.some((result) => result.code === 0),
      `round ${round.toString()}: at least one packager published`,
    );
    const { checksums, problems } = await checkS3Consistency(lab.admin, 'lab-packages', 'race');
    assert.deepEqual(problems, [], `round ${round.toString()}`);
    assert.deepEqual([...checksums.keys()], ['test-shared.tar.bz2']);
  }
  assert.deepEqual(
    (await listKeys(lab.admin, 'lab-packages', 'race')).filter((key) => key.startsWith('.')),
    [],
    'no temp object is left',
  );
});

test('a 200 MB file goes up to S3 in parts, streamed: the packager peaks less than half its size above a 1 kB upload', async (t) => {
  const lab = await startLab(t);
  const dir = await tempDir(t);
  await lab.admin.send(new CreateBucketCommand({ Bucket: 'lab-packages' }));
  const config = await writeS3Config(dir, lab, { upload_location: 's3://lab-packages/big', minimum_free_space: '0' }, 'part_size: 8\nupload_concurrency: 2\n');
  // Each run writes its peak RSS (KiB) where RSS_REPORT says, when it exits.
  const reporter = path.join(dir, 'report-rss.mjs');
  await writeFile(
    reporter,
    "import { writeFileSync } from 'node:fs';\nprocess.on('exit', () => { writeFileSync(process.env.RSS_REPORT, String(process.resourceUsage().maxRSS)); });\n",
  );
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
  // Parts in flight (8 MiB x 2), the part being filled and garbage not yet collected: about
  // 50-70 MiB here whatever the size. Holding the file would cost 200 MiB or more.
  assert.ok(
    bigPeak - smallPeak < 100 * 2 ** 20,
    `the 200 MiB upload took ${((bigPeak - smallPeak) / 2 ** 20).toFixed(0)} MiB more than a small one (bound: 100 MiB, half the file)`,
  );

  const head = await lab.admin.send(new HeadObjectCommand({ Bucket: 'lab-packages', Key: 'big/big.img' }));
  assert.equal(head.ContentLength, 200 * 2 ** 20);
  assert.match(head.ETag ?? '', /-25"?$/, 'a multipart ETag of 25 parts of 8 MiB');
  assert.deepEqual((await checkS3Consistency(lab.admin, 'lab-packages', 'big')).problems, []);
  await lab.admin.send(new DeleteObjectCommand({ Bucket: 'lab-packages', Key: 'big/big.img' }));
});

test('an upload to S3 killed at random moments leaves the index consistent with its objects, and the next run completes and clears the temps', async (t) => {
  const lab = await startLab(t);
  const dir = await tempDir(t);
  await lab.admin.send(new CreateBucketCommand({ Bucket: 'lab-packages' }));
  const clientDir = await generateTree(dir, 12, 256 * 1024);
  const config = await writeS3Config(dir, lab, { upload_location: 's3://lab-packages/killed', client_dir: clientDir, minimum_free_space: '0' });
  for (let trial = 0; trial < 5; trial += 1) {
    // A changed file each time, so every trial replaces something (temp key, copy, index).
    await writeFile(path.join(clientDir, 'tests', `t00${trial.toString()}`, 'notes.txt'), `trial ${trial.toString()}\n`);
    const child = spawn(process.execPath, [CLI, 'packager', 'upload', '--all', '--config', config], {
      cwd: dir,
      env: { ...process.env, ...awsEnv(lab.s3), AUTOTEST_CACHE_DIR: path.join(dir, '.cache'), AUTOTEST_CONFIG: '' },
      stdio: 'ignore',
    });
    const closed = new Promise<void>((resolve) =>
      child.on('close', () => {
        resolve();
      }),
    );
    setTimeout(() => child.kill('SIGKILL'), 400 + Math.floor(Math.random() * 1500));
    await closed;
    assert.deepEqual((await checkS3Consistency(lab.admin, 'lab-packages', 'killed', { sameLists: false })).problems, [], `trial ${trial.toString()}`);
  }
  const last = await lab.cli(['packager', 'upload', '--all', '--config', config], dir);
  assert.equal(last.code, 0, last.stdout + last.stderr);
  const { checksums, problems } = await checkS3Consistency(lab.admin, 'lab-packages', 'killed');
  assert.deepEqual(problems, []);
  assert.equal(checksums.size, 13);
  assert.deepEqual(
    (await listKeys(lab.admin, 'lab-packages', 'killed')).filter((key) => key.startsWith('.')),
    [],
    'the temps of the killed runs are gone',
  );
});

/**
 * A TCP relay in front of radosgw that cuts the first download of `file` after `cutAfter`
 * bytes of its answer (a real reset in the middle of a real S3 body) and notes every request
 * line with its Range header.
 */
async function startCuttingRelay(t: TestContext, upstream: URL, file: string, cutAfter: number): Promise<{ endpoint: string; requests: string[] }> {
  const requests: string[] = [];
  let cut = false;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstreamSocket = net.connect(Number(upstream.port), upstream.hostname);
    for (const socket of [client, upstreamSocket]) {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
    }
    let watching = false;
    let answered = 0;
    client.on('data', (chunk: Buffer) => {
      const text = chunk.toString('latin1');
      for (const match of text.matchAll(/^(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP\/1\.1\r\n([\s\S]*?)\r\n\r\n/gm)) {
        const range = /^range: *(.+)$/im.exec(match[3] ?? '')?.[1]?.trim();
        requests.push(`${match[1] ?? ''} ${match[2] ?? ''}${range ? ` ${range}` : ''}`);
        if (!cut && match[1] === 'GET' && (match[2] ?? '').includes(file)) watching = true;
      }
      upstreamSocket.write(chunk);
    });
    upstreamSocket.on('data', (chunk: Buffer) => {
      if (watching && !cut) {
        answered += chunk.length;
        if (answered > cutAfter) {
          cut = true;
          client.write(chunk.subarray(0, chunk.length - (answered - cutAfter)));
          client.resetAndDestroy();
          upstreamSocket.destroy();
          return;
        }
      }
      client.write(chunk);
    });
    client.on('error', () => upstreamSocket.destroy());
    upstreamSocket.on('error', () => client.destroy());
    client.on('close', () => upstreamSocket.destroy());
    upstreamSocket.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => {
          resolve();
        });
        for (const socket of sockets) socket.destroy();
      }),
  );
  const address = server.address() as net.AddressInfo;
  return { endpoint: `http://127.0.0.1:${address.port.toString()}`, requests };
}

async function sha256Of(file: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(file))
    .digest('hex');
}

test('a client, and the bundled client runtime with no node_modules, installs from S3 directly with profile credentials and through autotest serve in front of S3, and a download cut in the middle resumes with a Range request', async (t) => {
  const lab = await startLab(t);
  const dir = await tempDir(t);
  await lab.admin.send(new CreateBucketCommand({ Bucket: 'lab-packages' }));
  const clientDir = await generateTree(dir, 1, 8_000_000);
  const prefix = 's3://lab-packages/autotest/builtin';
  const publish = await writeS3Config(dir, lab, { upload_location: prefix, client_dir: clientDir, minimum_free_space: '0' }, '', 'publish.ini');
  const upload = await lab.cli(['packager', 'upload', '-t', 't000', '--config', publish], dir);
  assert.equal(upload.code, 0, upload.stdout + upload.stderr);
  const published = (await lab.admin.send(new HeadObjectCommand({ Bucket: 'lab-packages', Key: 'autotest/builtin/test-t000.tar.bz2' }))).ContentLength ?? 0;
  assert.ok(published > 3_000_000, `the test package is large enough to cut (${published.toString()} bytes)`);

  // Directly from S3, with the keys in a shared credentials file under a named profile.
  const credentials = path.join(dir, 'aws-credentials');
  await writeFile(credentials, `[lab]\naws_access_key_id = ${lab.s3.accessKey}\naws_secret_access_key = ${lab.s3.secretKey}\n`);
  const direct = await writeS3Config(dir, lab, { fetch_location: prefix }, '[S3:lab-packages]\nprofile: lab\n', 'direct.ini');
  const noKeys = { AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined, AWS_SHARED_CREDENTIALS_FILE: credentials };
  const installDirect = await lab.cli(['client', 'install', 'test', 't000', '--config', direct, '--install-dir', path.join(dir, 'direct')], dir, noKeys);
  assert.equal(installDirect.code, 0, installDirect.stdout + installDirect.stderr);
  assert.match(installDirect.stdout, /test t000: fetched .*from s3:\/\/lab-packages\/autotest\/builtin/);
  assert.equal(await sha256Of(path.join(dir, 'direct', 'tests', 't000', 'data.bin')), await sha256Of(path.join(clientDir, 'tests', 't000', 'data.bin')));

  // The bundled client runtime alone (what the client package carries to a lab machine): no
  // node_modules, Node.js and the keys in the environment.
  const machine = path.join(dir, 'machine');
  await mkdir(machine);
  await copyFile(path.join(ROOT, 'dist', 'client-runtime', 'autotest-client.mjs'), path.join(machine, 'autotest-client.mjs'));
  await copyFile(path.join(ROOT, 'dist', 'client-runtime', 'hash-worker.mjs'), path.join(machine, 'hash-worker.mjs'));
  const bundled = await runChecked(
    process.execPath,
    [path.join(machine, 'autotest-client.mjs'), 'client', 'install', 'test', 't000', '--config', direct, '--install-dir', path.join(machine, 'client')],
    {
      cwd: machine,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', AUTOTEST_CONFIG: '', ...awsEnv(lab.s3, noKeys) },
    },
  );
  lab.outputs.push(bundled.stdout, bundled.stderr);
  assert.match(bundled.stdout, /test t000: fetched .*from s3:\/\/lab-packages\/autotest\/builtin/);
  assert.equal(await sha256Of(path.join(machine, 'client', 'tests', 't000', 'data.bin')), await sha256Of(path.join(clientDir, 'tests', 't000', 'data.bin')));

  // Through autotest serve, which streams the prefix at /packages/builtin/ (with Range).
  const serveConfig = path.join(dir, 'serve.ini');
  await writeFile(
    serveConfig,
    `[PACKAGES]\nupload_location: ${prefix}\n[S3]\nendpoint: ${lab.s3.endpoint}\npath_style: true\nchecksum_mode: when_required\n[SERVER]\nlisten_address: 127.0.0.1\n`,
  );
  const base = `${await lab.serve(serveConfig, dir)}/packages/builtin`;
  const viaServe = await writeS3Config(dir, lab, { fetch_location: base }, '', 'via-serve.ini');
  const installServed = await lab.cli(['client', 'install', 'test', 't000', '--config', viaServe, '--install-dir', path.join(dir, 'served')], dir, {
    AWS_ACCESS_KEY_ID: undefined,
    AWS_SECRET_ACCESS_KEY: undefined,
  });
  assert.equal(installServed.code, 0, installServed.stdout + installServed.stderr);
  assert.match(installServed.stdout, new RegExp(`test t000: fetched .*from ${base.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}`));
  const whole = await fetch(`${base}/test-t000.tar.bz2`);
  const wholeBytes = Buffer.from(await whole.arrayBuffer());
  assert.equal(wholeBytes.length, published);
  const ranged = await fetch(`${base}/test-t000.tar.bz2`, { headers: { range: 'bytes=1000-1999' } });
  assert.equal(ranged.status, 206);
  assert.equal(ranged.headers.get('content-range'), `bytes 1000-1999/${published.toString()}`);
  assert.ok(Buffer.from(await ranged.arrayBuffer()).equals(wholeBytes.subarray(1000, 2000)), 'the range served is those bytes of the object');
  const notModified = await fetch(`${base}/test-t000.tar.bz2`, { headers: { 'if-none-match': whole.headers.get('etag') ?? '' } });
  assert.equal(notModified.status, 304);
  assert.equal((await fetch(`${base}/test-nope.tar.bz2`)).status, 404);
  const head = await fetch(`${base}/test-t000.tar.bz2`, { method: 'HEAD' });
  assert.equal(head.status, 200);
  assert.equal(head.headers.get('content-length'), published.toString());
  const etag = whole.headers.get('etag') ?? '';
  assert.equal(
    (await fetch(`${base}/test-t000.tar.bz2`, { headers: { range: 'bytes=10-19', 'if-range': etag } })).status,
    206,
    'If-Range with the current ETag: the range',
  );
  const stale = await fetch(`${base}/test-t000.tar.bz2`, { headers: { range: 'bytes=10-19', 'if-range': '"0123456789abcdef0123456789abcdef"' } });
  assert.equal(stale.status, 200, 'If-Range with another ETag: the whole file');
  assert.equal(Buffer.from(await stale.arrayBuffer()).length, published);
  assert.equal((await fetch(`${base}/test-t000.tar.bz2`, { headers: { range: `bytes=${published.toString()}-` } })).status, 416);
  assert.match(await (await fetch(`${base}/`)).text(), /test-t000\.tar\.bz2/);

  // A cut in the middle of the S3 body: the fetcher asks for the rest only.
  const relay = await startCuttingRelay(t, new URL(lab.s3.endpoint), 'test-t000.tar.bz2', 1_000_000);
  const cutConfig = path.join(dir, 'cut.ini');
  await writeFile(cutConfig, `[PACKAGES]\nfetch_location: ${prefix}\n[S3]\nendpoint: ${relay.endpoint}\npath_style: true\nchecksum_mode: when_required\n`);
  const resumed = await lab.cli(['client', 'install', 'test', 't000', '--json', '--config', cutConfig, '--install-dir', path.join(dir, 'resumed')], dir);
  assert.equal(resumed.code, 0, resumed.stdout + resumed.stderr);
  const gets = relay.requests.filter((request) => request.startsWith('GET') && request.includes('test-t000.tar.bz2'));
  assert.equal(gets.length, 2, `one cut GET and one resumed GET: ${gets.join(' | ')}`);
  const resumedFrom = Number(/bytes=(\d+)-$/.exec(gets[1] ?? '')?.[1]);
  assert.ok(resumedFrom > 0 && resumedFrom <= 1_000_000, `the second GET asks for the rest (${gets[1] ?? ''})`);
  const [record] = JSON.parse(resumed.stdout) as { bytes: number }[];
  assert.ok(record && record.bytes < published + 1000 && record.bytes >= published, `bytes moved in all: ${String(record?.bytes)} for ${published.toString()}`);
  assert.equal(await sha256Of(path.join(dir, 'resumed', 'tests', 't000', 'data.bin')), await sha256Of(path.join(clientDir, 'tests', 't000', 'data.bin')));
});

test('wrong credentials, a missing bucket and an unreachable endpoint each give an error naming the S3 location without secrets, and the next fetch_location is used', async (t) => {
  const lab = await startLab(t);
  const dir = await tempDir(t);
  await lab.admin.send(new CreateBucketCommand({ Bucket: 'lab-packages' }));
  const clientDir = await copyExampleTree(dir);
  const local = path.join(dir, 'local');
  const deadPort = await freePort();
  const deadEndpoint = `[S3:dead-bucket]\nendpoint: http://127.0.0.1:${deadPort.toString()}\n`;
  const publish = await writeS3Config(
    dir,
    lab,
    { upload_location: `${local}, s3://lab-packages/builtin`, client_dir: clientDir, minimum_free_space: '0' },
    '',
    'publish.ini',
  );
  assert.equal((await lab.cli(['packager', 'upload', '-t', 'hello', '--config', publish], dir)).code, 0);
  const wrongSecret = { AWS_SECRET_ACCESS_KEY: `${lab.s3.secretKey.slice(0, -1)}${lab.s3.secretKey.endsWith('0') ? '1' : '0'}` };

  const fetchConfig = await writeS3Config(
    dir,
    lab,
    {
      fetch_location: `s3://no-such-bucket/builtin, s3://dead-bucket/builtin, s3://lab-packages/builtin, ${local}`,
      fetch_cooldown: '0',
      fetch_connect_timeout: '2',
    },
    deadEndpoint,
    'fetch.ini',
  );
  const fallback = await lab.cli(['client', 'install', 'test', 'hello', '--config', fetchConfig, '--install-dir', path.join(dir, 'one')], dir, wrongSecret);
  assert.equal(fallback.code, 0, fallback.stdout + fallback.stderr);
  assert.match(fallback.stdout, new RegExp(`test hello: fetched .*from ${local.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}`));
  assert.match(fallback.stderr, /passed over s3:\/\/no-such-bucket\/builtin.*(access denied|does not exist)/);
  assert.match(fallback.stderr, /passed over s3:\/\/dead-bucket\/builtin.*cannot connect \(ECONNREFUSED\)/);
  assert.match(fallback.stderr, /passed over s3:\/\/lab-packages\/builtin.*access denied \(SignatureDoesNotMatch, 403\).*check the credentials/);

  const rightKeys = await lab.cli(['client', 'install', 'test', 'hello', '--config', fetchConfig, '--install-dir', path.join(dir, 'two')], dir);
  assert.equal(rightKeys.code, 0, rightKeys.stdout + rightKeys.stderr);
  assert.match(rightKeys.stdout, /test hello: fetched .*from s3:\/\/lab-packages\/builtin/);
  assert.match(rightKeys.stderr, /passed over s3:\/\/no-such-bucket\/builtin.*the bucket does not exist \(NoSuchBucket\)/);

  // A corrupt object on S3: caught by its checksum, and the next repository serves.
  await lab.admin.send(new PutObjectCommand({ Bucket: 'lab-packages', Key: 'builtin/test-hello.tar.bz2', Body: 'not the package' }));
  const corrupt = await lab.cli(['client', 'install', 'test', 'hello', '--config', fetchConfig, '--install-dir', path.join(dir, 'four')], dir);
  assert.equal(corrupt.code, 0, corrupt.stdout + corrupt.stderr);
  assert.match(corrupt.stderr, /passed over s3:\/\/lab-packages\/builtin\/test-hello\.tar\.bz2: 15 bytes, but its index gives \d+; discarded/);
  assert.match(corrupt.stdout, /test hello: fetched .*from \//);

  const onlyS3 = await writeS3Config(dir, lab, { fetch_location: 's3://lab-packages/builtin', fetch_cooldown: '0' }, '', 'only.ini');
  const refused = await lab.cli(['client', 'install', 'test', 'hello', '--config', onlyS3, '--install-dir', path.join(dir, 'three')], dir, wrongSecret);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /s3:\/\/lab-packages\/builtin.*access denied/);

  for (const [target, env, expected] of [
    ['s3://no-such-bucket/builtin', {}, /s3:\/\/no-such-bucket\/builtin.*the bucket does not exist[\s\S]*create the bucket first/],
    ['s3://dead-bucket/builtin', {}, /s3:\/\/dead-bucket\/builtin.*cannot connect to the S3 endpoint \(ECONNREFUSED\)/],
    ['s3://lab-packages/builtin', wrongSecret, /s3:\/\/lab-packages\/builtin.*access denied/],
  ] as const) {
    const uploadConfig = await writeS3Config(dir, lab, { upload_location: target, client_dir: clientDir, minimum_free_space: '0' }, deadEndpoint, 'upload.ini');
    const result = await lab.cli(['packager', 'upload', '-t', 'hello', '--config', uploadConfig], dir, env);
    assert.equal(result.code, 1, `${target}: ${result.stdout}${result.stderr}`);
    assert.match(result.stdout + result.stderr, expected);
  }
  for (const output of lab.outputs) assert.doesNotMatch(output, /Signature=|x-amz-signature/i, 'no signature in any output');
});

test('the frontend lists, serves, takes uploads to and deletes from an S3 custom location', async (t) => {
  const lab = await startLab(t);
  const dir = await tempDir(t);
  await lab.admin.send(new CreateBucketCommand({ Bucket: 'lab-packages' }));
  const config = path.join(dir, 'serve.ini');
  await writeFile(
    config,
    [
      '[PACKAGES]',
      'custom_upload_location: s3://lab-packages/custom',
      `custom_download_location: ${path.join(dir, 'staging')}`,
      'minimum_free_space: 0',
      '[S3]',
      `endpoint: ${lab.s3.endpoint}`,
      'path_style: true',
      'checksum_mode: when_required',
      '[SERVER]',
      'listen_address: 127.0.0.1',
      'upload_token: s3-upload-token-123',
      '',
    ].join('\n'),
  );
  const site = await lab.serve(config, dir);
  const tree = path.join(dir, 'mine');
  await mkdir(tree);
  await writeFile(path.join(tree, 'control'), 'job.run_test("mine")\n');
  const tarball = path.join(dir, 'test-mine.tar.bz2');
  await runChecked('tar', ['-cjf', tarball, '-C', tree, '.']);
  const body = await readFile(tarball);
  const auth = { authorization: 'Bearer s3-upload-token-123' };

  const put = await fetch(`${site}/api/custom/test-mine.tar.bz2`, { method: 'PUT', headers: auth, body });
  assert.equal(put.status, 200, await put.text());
  assert.deepEqual((await checkS3Consistency(lab.admin, 'lab-packages', 'custom')).problems, []);
  const listed = (await (await fetch(`${site}/api/packages`)).json()) as { name: string; packages: { file: string }[] }[];
  assert.deepEqual(
    listed.find((r) => r.name === 'custom')?.packages.map((p) => p.file),
    ['test-mine.tar.bz2'],
  );
  assert.match(await (await fetch(`${site}/`)).text(), /test-mine\.tar\.bz2/);
  assert.ok(Buffer.from(await (await fetch(`${site}/packages/custom/test-mine.tar.bz2`)).arrayBuffer()).equals(body));

  const removed = await fetch(`${site}/api/custom/test-mine.tar.bz2`, { method: 'DELETE', headers: auth });
  assert.equal(removed.status, 200, await removed.text());
  assert.equal((await checkS3Consistency(lab.admin, 'lab-packages', 'custom')).checksums.size, 0);
  assert.equal(await getObject(lab.admin, 'lab-packages', 'custom/test-mine.tar.bz2'), undefined);
  assert.equal((await fetch(`${site}/packages/custom/test-mine.tar.bz2`)).status, 404);
});

test('autotest serve in front of a private S3 prefix signs its requests, fetches a package once for 20 concurrent clients, and shows its own uploads and deletes at once', async (t) => {
  const lab = await startLab(t);
  const dir = await tempDir(t);
  await lab.admin.send(new CreateBucketCommand({ Bucket: 'lab-packages' }));
  // Every request of the front to S3 goes through the relay, which notes it.
  const relay = await startCuttingRelay(t, new URL(lab.s3.endpoint), 'kernel-front.img', Number.POSITIVE_INFINITY);
  const config = path.join(dir, 'serve.ini');
  await writeFile(
    config,
    [
      '[PACKAGES]',
      'custom_upload_location: s3://lab-packages/front',
      `custom_download_location: ${path.join(dir, 'staging')}`,
      'minimum_free_space: 0',
      '[S3]',
      `endpoint: ${relay.endpoint}`,
      'path_style: true',
      'checksum_mode: when_required',
      '[SERVER]',
      'listen_address: 127.0.0.1',
      'upload_token: s3-upload-token-123',
      'index_max_age: 3600',
      '',
    ].join('\n'),
  );
  const site = await lab.serve(config, dir);
  const auth = { authorization: 'Bearer s3-upload-token-123' };
  const url = `${site}/packages/custom/kernel-front.img`;
  assert.equal((await fetch(`${site}/packages/custom/packages.checksum`)).status, 404, 'a prefix nobody published to is an empty repository');

  const first = randomBytes(3 * 1024 * 1024);
  const put = await fetch(`${site}/api/custom/kernel-front.img`, { method: 'PUT', headers: auth, body: first });
  assert.equal(put.status, 200, await put.text());
  // Private: S3 answers an unsigned GET 403, so what the clients get came through signed requests.
  assert.equal((await fetch(`${lab.s3.endpoint}/lab-packages/front/kernel-front.img`)).status, 403);
  const answers = await Promise.all(
    Array.from({ length: 20 }, async () => {
      const answer = await fetch(url);
      return { status: answer.status, cache: answer.headers.get('x-autotest-cache'), body: Buffer.from(await answer.arrayBuffer()) };
    }),
  );
  for (const answer of answers) {
    assert.equal(answer.status, 200);
    assert.ok(answer.body.equals(first));
  }
  const gets = (): string[] => relay.requests.filter((request) => request.startsWith('GET ') && request.includes('kernel-front.img'));
  assert.equal(gets().length, 1, `one S3 GET for 20 clients: ${gets().join(' | ')}`);
  assert.deepEqual(answers.filter((answer) => answer.cache === 'miss').length, 1);

  // The same name with other bytes, published through this server: served at once, index_max_age notwithstanding.
  const second = randomBytes(1024 * 1024);
  const replaced = await fetch(`${site}/api/custom/kernel-front.img`, { method: 'PUT', headers: auth, body: second });
  assert.equal(replaced.status, 200, await replaced.text());
  assert.ok(Buffer.from(await (await fetch(url)).arrayBuffer()).equals(second));
  assert.equal(gets().length, 2);

  // A second front that revalidates at every request: S3 answers its signed If-None-Match 304.
  const revalidating = path.join(dir, 'revalidating.ini');
  await writeFile(
    revalidating,
    (await readFile(config, 'utf8')).replace('index_max_age: 3600', `index_max_age: 0\ncache_dir: ${path.join(dir, 'second-cache')}`),
  );
  const revalidatingSite = await lab.serve(revalidating, dir);
  for (let i = 0; i < 2; i += 1) assert.equal((await fetch(`${revalidatingSite}/packages/custom/packages.checksum`)).status, 200);
  const metrics = await (await fetch(`${revalidatingSite}/metrics`)).text();
  assert.match(metrics, /^autotest_cache_index_revalidations_total\{result="unchanged"\} [1-9]/m);

  const removed = await fetch(`${site}/api/custom/kernel-front.img`, { method: 'DELETE', headers: auth });
  assert.equal(removed.status, 200, await removed.text());
  const gone = await fetch(url);
  assert.equal(gone.status, 404);
  assert.match(await gone.text(), /kernel-front\.img: not in this repository/);
});
