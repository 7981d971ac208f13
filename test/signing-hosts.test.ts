import assert from 'node:assert/strict';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import test, { type TestContext } from 'node:test';
import { digestFile, formatChecksumFile, formatManifest, parseManifestDocument } from '../src/packages/index.js';
import { CreateBucketCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { startNginx } from './fixtures/nginx.js';
import { adminClient, awsEnv, startRadosgw } from './fixtures/radosgw.js';
import { startSshd } from './fixtures/sshd.js';
import { copyExampleTree, execFileAsync, pathWithout, ROOT, runCli, tempDir, writeConfig } from './helpers.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';

const CONTROL = path.join(ROOT, 'example', 'jobs', 'example.control.mjs');
const CLIENT = 'client-autotest.tar.bz2';

interface SignedLab {
  dir: string;
  /** The repository folder nginx serves. */
  repo: string;
  /** autoserv's config: the repository by HTTP, signing_key and trusted_keys. */
  config: string;
  keyFile: string;
  signers: string;
}

interface Summary {
  clientInstall: string;
  why: string[];
  status: string;
  host: string;
}

/** The lab's signing key made by ssh-keygen, and an allowed_signers file trusting it. */
async function labKey(dir: string, principal = 'autotest'): Promise<{ keyFile: string; signers: string }> {
  const keyFile = path.join(dir, 'signing_key');
  await execFileAsync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'lab', '-f', keyFile]);
  const signers = path.join(dir, 'allowed_signers');
  await writeFile(signers, `${principal} ${(await readFile(`${keyFile}.pub`, 'utf8')).trim()}\n`);
  return { keyFile, signers };
}

/** What a lab runs to check a repository with OpenSSH alone; rejects when ssh-keygen does not accept the pair. */
async function sshKeygenVerify(signers: string, manifest: Buffer | string, signature: Buffer | string): Promise<void> {
  const dir = await mkdtemp(path.join(tmpdir(), 'autotest-verify-'));
  try {
    await writeFile(path.join(dir, 'packages.json'), manifest);
    await writeFile(path.join(dir, 'packages.json.sig'), signature);
    const { stdout } = await execFileAsync('sh', [
      '-c',
      'ssh-keygen -Y verify -f "$1" -I autotest -n autotest-packages -s "$2/packages.json.sig" < "$2/packages.json"',
      'sh',
      signers,
      dir,
    ]);
    assert.match(stdout, /Good "autotest-packages" signature/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function serialOf(manifest: Buffer | string): number {
  const { serial } = parseManifestDocument(manifest.toString(), 'packages.json').header;
  assert.ok(serial !== undefined, 'the manifest has a serial');
  return serial;
}

/** A lab key made by ssh-keygen, the repository published signed with it and served by nginx. */
async function signedLab(t: TestContext): Promise<SignedLab> {
  const dir = await tempDir(t);
  const clientDir = await copyExampleTree(dir);
  // Another principal than "autotest": trusted_keys believes every key it lists, whatever its name.
  const { keyFile, signers } = await labKey(dir, 'packager@lab');
  const repo = path.join(dir, 'www', 'builtin');
  await mkdir(repo, { recursive: true });
  const nginx = await startNginx({ root: path.join(dir, 'www') });
  t.after(() => nginx.stop());
  const config = await writeConfig(dir, {
    upload_location: repo,
    fetch_location: `${nginx.url}/builtin`,
    client_dir: clientDir,
    minimum_free_space: '0',
    signing_key: keyFile,
    trusted_keys: signers,
  });
  const publish = await runCli(['packager', 'upload', '--all', '--config', config], { cwd: dir });
  assert.equal(publish.code, 0, publish.stderr);
  return { dir, repo, config, keyFile, signers };
}

/** autoserv runs the example job on `machine` (localhost unless said), with the lab's config. */
async function runAutoserv(lab: SignedLab, env: NodeJS.ProcessEnv = {}, machine = 'localhost'): Promise<{ summary: Summary; hostDir: string; output: string }> {
  const hostDir = path.join(lab.dir, 'host');
  const result = await runCli(['autoserv', '-m', machine, '-r', path.join(lab.dir, 'results'), '--config', lab.config, '--host-dir', hostDir, CONTROL], {
    cwd: lab.dir,
    env,
  });
  const [summary] = JSON.parse(await readFile(path.join(lab.dir, 'results', 'summary.json'), 'utf8')) as Summary[];
  assert.ok(summary, result.stdout + result.stderr);
  return { summary, hostDir, output: result.stdout + result.stderr };
}

/** A mirror that replaces the client package and recomputes both index files, keeping the old signature. */
async function tamperClient(repo: string): Promise<string> {
  const client = path.join(repo, CLIENT);
  await writeFile(client, await readFile(path.join(repo, 'test-hello.tar.bz2')));
  const digests = await digestFile(client);
  const { index, header } = parseManifestDocument(await readFile(path.join(repo, 'packages.json'), 'utf8'), 'packages.json');
  index.set(CLIENT, { file: CLIENT, md5: digests.md5, sha256: digests.sha256, size: digests.size });
  await writeFile(path.join(repo, 'packages.json'), formatManifest(index, header));
  await writeFile(path.join(repo, 'packages.checksum'), formatChecksumFile(index));
  return digests.md5;
}

async function transferSources(lab: SignedLab, summary: Summary): Promise<string[]> {
  const transfers = JSON.parse(await readFile(path.join(lab.dir, 'results', summary.host, 'transfers.json'), 'utf8')) as {
    transfers: { repository: string }[];
  };
  return [...new Set(transfers.transfers.map((r) => r.repository))];
}

for (const over of ['localhost', 'an SSH host'] as const) {
  test(`autoserv on ${over} installs the client by packaging from a signed repository once ssh-keygen on the host verifies it, and the job's client verifies its index with the trusted keys it was sent`, async (t) => {
    const lab = await signedLab(t);
    let run = (): ReturnType<typeof runAutoserv> => runAutoserv(lab);
    if (over === 'an SSH host') {
      const server = await startSshd();
      t.after(() => server.stop());
      run = () => runAutoserv(lab, { AUTOTEST_SSH_CONFIG: server.configFile }, server.alias);
    }
    const { summary, hostDir, output } = await run();
    assert.equal(summary.clientInstall, 'packaging', output);
    assert.equal(summary.status, 'GOOD', output);
    const manifest = parseManifestDocument(await readFile(path.join(lab.repo, 'packages.json'), 'utf8'), 'packages.json');
    assert.equal((await readFile(path.join(hostDir, 'client', '.checksum'), 'utf8')).trim(), manifest.index.get(CLIENT)?.md5);
    const memory = JSON.parse(await readFile(path.join(hostDir, 'packages', 'repository-serials.json'), 'utf8')) as Record<string, number>;
    assert.deepEqual(Object.values(memory), [manifest.header.serial], 'the host remembers the serial it verified');
    assert.match(await readFile(path.join(hostDir, 'trust', 'trusted_keys'), 'utf8'), /^autotest namespaces="autotest-packages" ssh-ed25519 \S+$/m);
    const sources = await transferSources(lab, summary);
    assert.ok(sources.length === 1 && sources[0]?.endsWith('/builtin'), `the job's packages came from the signed repository: ${sources.join(', ')}`);
  });
}

test("autoserv refuses a tampering repository (client replaced, both index files recomputed, old signature kept) for the client install, copies the client and says why; the job's client refuses it too", async (t) => {
  const lab = await signedLab(t);
  const forgedMd5 = await tamperClient(lab.repo);
  const { summary, hostDir, output } = await runAutoserv(lab);
  assert.equal(summary.clientInstall, 'light copy', output);
  assert.match(summary.why.join('; '), /packaging: .*\/builtin: packages\.json\.sig does not verify with trusted_keys; not believed/);
  assert.notEqual(
    (await readFile(path.join(hostDir, 'client', '.checksum'), 'utf8').catch(() => '')).trim(),
    forgedMd5,
    'the forged client was never installed',
  );
  assert.equal(summary.status, 'GOOD', output);
  assert.deepEqual(await transferSources(lab, summary), ['autoserv'], 'every package came from autoserv, none from the forged index');
  assert.match(
    output,
    /\[localhost\] warning: test sleeptest: passed over .*\/builtin: packages\.json\.sig is wrong: .*does not match the manifest; not believed.*; asking autoserv/,
  );
});

test('autoserv refuses an older signed index than the host has verified before (rollback) for the client install, saying so', async (t) => {
  const lab = await signedLab(t);
  const old = path.join(lab.dir, 'old');
  await cp(lab.repo, old, { recursive: true });
  const signed = await runCli(['packager', 'sign', '--config', lab.config], { cwd: lab.dir });
  assert.equal(signed.code, 0, signed.stdout + signed.stderr);
  const first = await runAutoserv(lab);
  assert.equal(first.summary.clientInstall, 'packaging', first.output);
  // A mirror serving the repository as it was before the newer signed serial.
  await cp(old, lab.repo, { recursive: true, force: true });
  const { summary, output } = await runAutoserv(lab);
  assert.equal(summary.clientInstall, 'light copy', output);
  assert.match(
    summary.why.join('; '),
    /packaging: .*\/builtin: its signed packages\.json has serial \d+, older than serial \d+ seen from it before \(rolled back\); not believed/,
  );
});

test("a host without ssh-keygen cannot verify: packaging is refused with the reason and the client copied, and the job's client still verifies the repository itself", async (t) => {
  const lab = await signedLab(t);
  const { summary, output } = await runAutoserv(lab, { PATH: await pathWithout(lab.dir, 'ssh-keygen') });
  assert.equal(summary.clientInstall, 'light copy', output);
  assert.match(summary.why.join('; '), /packaging: refused: trusted_keys is set and the host cannot verify signed repositories \(no ssh-keygen on the host\)/);
  assert.equal(summary.status, 'GOOD', output);
  const sources = await transferSources(lab, summary);
  assert.ok(sources.length === 1 && sources[0]?.endsWith('/builtin'), `the job fetched from the verified repository: ${sources.join(', ')}`);
});

test('an SSH location is signed on every upload and remove, as ssh-keygen -Y verify accepts, a client with trusted_keys installs from it over SSH, and with signing_key turned off the next write removes the signature', async (t) => {
  const server = await startSshd();
  t.after(() => server.stop());
  const dir = await tempDir(t);
  const { keyFile, signers } = await labKey(dir);
  const remoteDir = path.join(dir, 'remote');
  const location = `ssh://${server.alias}${remoteDir}`;
  const config = await writeConfig(dir, {
    upload_location: location,
    fetch_location: location,
    client_dir: await copyExampleTree(dir),
    minimum_free_space: '0',
    signing_key: keyFile,
    trusted_keys: signers,
  });
  const env = { AUTOTEST_SSH_CONFIG: server.configFile };
  const upload = await runCli(['packager', 'upload', '-t', 'hello,sleeptest', '--config', config], { cwd: dir, env });
  assert.equal(upload.code, 0, upload.stdout + upload.stderr);
  const read = async (file: string): Promise<Buffer> => readFile(path.join(remoteDir, file));
  await sshKeygenVerify(signers, await read('packages.json'), await read('packages.json.sig'));
  const first = serialOf(await read('packages.json'));
  const install = await runCli(['client', 'install', 'test', 'hello', '--config', config, '--install-dir', path.join(dir, 'install')], { cwd: dir, env });
  assert.equal(install.code, 0, install.stdout + install.stderr);
  assert.match(install.stdout, new RegExp(`test hello: fetched .*from ssh://${server.alias}`));
  const remove = await runCli(['packager', 'remove', '-t', 'sleeptest', '--config', config], { cwd: dir, env });
  assert.equal(remove.code, 0, remove.stdout + remove.stderr);
  await sshKeygenVerify(signers, await read('packages.json'), await read('packages.json.sig'));
  assert.ok(serialOf(await read('packages.json')) > first, 'the remove wrote a newer signed serial');
  const unsigned = await writeConfig(dir, { upload_location: location, client_dir: path.join(dir, 'client'), minimum_free_space: '0' }, 'unsigned.ini');
  const off = await runCli(['packager', 'remove', '-t', 'hello', '--config', unsigned], { cwd: dir, env });
  assert.equal(off.code, 0, off.stdout + off.stderr);
  await assert.rejects(read('packages.json.sig'), /ENOENT/, 'signing_key turned off: the stale signature is gone');
});

test('an S3 location is signed on upload, as ssh-keygen -Y verify accepts, a client with trusted_keys installs from it, a packages.json changed there is refused, and with signing_key turned off the next write removes the signature', async (t) => {
  const s3 = await startRadosgw();
  t.after(() => s3.stop());
  const admin = adminClient(s3);
  t.after(() => {
    admin.destroy();
  });
  await admin.send(new CreateBucketCommand({ Bucket: 'lab-packages' }));
  const dir = await tempDir(t);
  const { keyFile, signers } = await labKey(dir);
  const location = 's3://lab-packages/autotest/builtin';
  const config = path.join(dir, 'global_config.ini');
  await writeFile(
    config,
    [
      '[PACKAGES]',
      `upload_location: ${location}`,
      `fetch_location: ${location}`,
      `client_dir: ${await copyExampleTree(dir)}`,
      'minimum_free_space: 0',
      `signing_key: ${keyFile}`,
      `trusted_keys: ${signers}`,
      '',
      '[S3]',
      `endpoint: ${s3.endpoint}`,
      'region: us-east-1',
      'path_style: true',
      'checksum_mode: when_required',
      '',
    ].join('\n'),
  );
  const env = awsEnv(s3);
  const upload = await runCli(['packager', 'upload', '-t', 'hello', '--config', config], { cwd: dir, env });
  assert.equal(upload.code, 0, upload.stdout + upload.stderr);
  const get = async (file: string): Promise<Buffer> => {
    const answer = await admin.send(new GetObjectCommand({ Bucket: 'lab-packages', Key: `autotest/builtin/${file}` }));
    return Buffer.from((await answer.Body?.transformToByteArray()) ?? []);
  };
  const manifest = await get('packages.json');
  await sshKeygenVerify(signers, manifest, await get('packages.json.sig'));
  const install = await runCli(['client', 'install', 'test', 'hello', '--config', config, '--install-dir', path.join(dir, 'install')], { cwd: dir, env });
  assert.equal(install.code, 0, install.stdout + install.stderr);
  assert.match(install.stdout, /test hello: fetched .*from s3:\/\/lab-packages\/autotest\/builtin/);

  // Someone with write access to the bucket but not the key: a newer serial, the old signature.
  const forged = manifest.toString().replace(/"serial": (\d+)/, (_match, serial: string) => `"serial": ${(Number(serial) + 1).toString()}`);
  await admin.send(new PutObjectCommand({ Bucket: 'lab-packages', Key: 'autotest/builtin/packages.json', Body: forged }));
  const refused = await runCli(['client', 'install', 'test', 'hello', '--config', config, '--install-dir', path.join(dir, 'install2')], { cwd: dir, env });
  assert.equal(refused.code, 1, refused.stdout);
  assert.match(
    refused.stderr,
    /s3:\/\/lab-packages\/autotest\/builtin: packages\.json\.sig is wrong: its signature by SHA256:\S+ does not match the manifest; not believed/,
  );

  // signing_key turned off: the next index write removes the signature it no longer matches.
  await writeFile(config, (await readFile(config, 'utf8')).replace(/^signing_key: .*$/m, 'signing_key:'));
  const off = await runCli(['packager', 'remove', '-t', 'hello', '--config', config], { cwd: dir, env });
  assert.equal(off.code, 0, off.stdout + off.stderr);
  await assert.rejects(get('packages.json.sig'), (error: Error) => error.name === 'NoSuchKey');
});
