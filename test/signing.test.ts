import assert from 'node:assert/strict';
import { cp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import test, { type TestContext } from 'node:test';
import type { FetchSettings, Location } from '../src/config/index.js';
import { loadConfig } from '../src/config/index.js';
import { PackageFetcher } from '../src/fetch/index.js';
import { digestFile, formatChecksumFile, formatManifest, parseManifestDocument, type RepositoryIndex } from '../src/packages/index.js';
import { uploadPackages } from '../src/packager/index.js';
import { installPackages } from '../src/client/install.js';
import { buildServer } from '../src/server/index.js';
import { createLocalTarget } from '../src/repositories/index.js';
import {
  loadIndexSigning,
  parseAllowedSigners,
  readSigningKey,
  SIGNATURE_NAMESPACE,
  signSshsig,
  verifySshsig,
  type IndexSigning,
} from '../src/signing/index.js';
import { EXAMPLE_CLIENT, execFileAsync, md5sumCheck, runCli, tempDir, writeConfig } from './helpers.js';

const FAST: FetchSettings = { connectTimeoutMs: 1000, timeoutMs: 5000, retries: 0, cooldownMs: 0, maxSizeBytes: 1e9 };
const KERNEL = 'kernel.img';

interface Key {
  file: string;
  publicLine: string;
  signing: IndexSigning;
}

/** A key made by ssh-keygen, as a lab makes its signing key. */
async function makeKey(dir: string, name: string, validDays?: number): Promise<Key> {
  const file = path.join(dir, name);
  await execFileAsync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', name, '-f', file]);
  const publicLine = (await readFile(`${file}.pub`, 'utf8')).trim();
  return { file, publicLine, signing: { key: await readSigningKey(file, `test: ${name}`), validDays } };
}

async function allowedSigners(dir: string, keys: Key[], name = 'allowed_signers'): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, keys.map((key) => `autotest ${key.publicLine}\n`).join(''));
  return file;
}

function local(p: string): Location {
  return { kind: 'local', path: p, text: p };
}

function trusting(keys: Key[], required = true): FetchSettings {
  return {
    ...FAST,
    trust: { file: { file: 'allowed_signers', setAt: 'test' }, required, keys: keys.map((key) => key.signing.key.publicBlob), text: undefined },
  };
}

/** Publishes a plain file of `content` into `repo`, signed with `key`. */
async function publish(dir: string, repo: string, content: string, signing: IndexSigning | undefined): Promise<void> {
  const source = path.join(dir, KERNEL);
  await writeFile(source, content);
  const report = await uploadPackages({
    clientDir: EXAMPLE_CLIENT,
    selection: { all: false, tests: [], profilers: [], deps: [], client: false, files: [source] },
    locations: [local(repo)],
    compression: 'bzip2',
    minimumFreeBytes: 0,
    cacheDir: path.join(dir, 'pack-cache'),
    signing,
  });
  assert.equal(report.ok, true, JSON.stringify(report));
}

async function serialOf(repo: string): Promise<number | undefined> {
  return parseManifestDocument(await readFile(path.join(repo, 'packages.json'), 'utf8'), 'packages.json').header.serial;
}

/** A mirror that replaces the package and recomputes both index files, keeping the old signature. */
async function tamper(repo: string, bytes: string): Promise<void> {
  await writeFile(path.join(repo, KERNEL), bytes);
  const digests = await digestFile(path.join(repo, KERNEL));
  const { index, header } = parseManifestDocument(await readFile(path.join(repo, 'packages.json'), 'utf8'), 'packages.json');
  const forged: RepositoryIndex = new Map(index);
  forged.set(KERNEL, { file: KERNEL, md5: digests.md5, sha256: digests.sha256, size: digests.size });
  await writeFile(path.join(repo, 'packages.json'), formatManifest(forged, header));
  await writeFile(path.join(repo, 'packages.checksum'), formatChecksumFile(forged));
}

/** A plain static server in front of a folder, as nginx would be. */
async function serve(t: TestContext, dir: string): Promise<Location> {
  const server = http.createServer((request, response) => {
    void readFile(path.join(dir, decodeURIComponent((request.url ?? '/').slice(1)))).then(
      (body) => {
        response.writeHead(200, { 'content-length': body.length }).end(body);
      },
      () => {
        response.writeHead(404).end();
      },
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => {
          resolve();
        });
      }),
  );
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port.toString()}`;
  return { kind: 'http', url, text: url };
}

async function fetchKernel(
  dir: string,
  locations: Location[],
  settings: FetchSettings,
  out = 'out',
): Promise<{ content: string; repository: string; passedOver: string[] }> {
  const fetcher = await PackageFetcher.create(locations, settings, { stateDir: path.join(dir, 'cache') });
  const dest = path.join(dir, out, KERNEL);
  const fetched = await fetcher.fetch(KERNEL, dest);
  return { content: await readFile(dest, 'utf8'), repository: fetched.repository, passedOver: fetched.passedOver };
}

test('a signed index is what ssh-keygen -Y verify and -Y check-novalidate accept, and what ssh-keygen -Y sign writes verifies here', async (t) => {
  const dir = await tempDir(t);
  const key = await makeKey(dir, 'signer');
  const repo = path.join(dir, 'repo');
  await publish(dir, repo, 'kernel one\n', key.signing);
  const signers = await allowedSigners(dir, [key]);
  const manifest = path.join(repo, 'packages.json');
  const sig = path.join(repo, 'packages.json.sig');
  const verified = await execFileAsync('sh', [
    '-c',
    'ssh-keygen -Y verify -f "$1" -I autotest -n autotest-packages -s "$2" < "$3"',
    'sh',
    signers,
    sig,
    manifest,
  ]);
  assert.match(verified.stdout, /Good "autotest-packages" signature for autotest/);
  await execFileAsync('sh', ['-c', 'ssh-keygen -Y check-novalidate -n autotest-packages -s "$1" < "$2"', 'sh', sig, manifest]);
  assert.equal(await md5sumCheck(repo), `${KERNEL}: OK\n`, 'packages.checksum is still what md5sum reads');

  const copy = path.join(dir, 'copy.json');
  await cp(manifest, copy);
  await execFileAsync('ssh-keygen', ['-q', '-Y', 'sign', '-f', key.file, '-n', SIGNATURE_NAMESPACE, copy]);
  const theirs = await readFile(`${copy}.sig`, 'utf8');
  const message = await readFile(copy);
  assert.equal(verifySshsig(theirs, message, SIGNATURE_NAMESPACE, [key.signing.key.publicBlob]).valid, true);
  const other = verifySshsig(theirs, message, 'git', [key.signing.key.publicBlob]);
  assert.match(other.valid ? 'valid' : other.why, /namespace "autotest-packages", not "git"/);
  const forged = verifySshsig(await signSshsig(message, key.signing.key, SIGNATURE_NAMESPACE), Buffer.from('{"version":1}'), SIGNATURE_NAMESPACE, [
    key.signing.key.publicBlob,
  ]);
  assert.match(forged.valid ? '' : forged.why, /does not match the manifest/);
});

test('every index change writes a larger serial, and an expiry when index_valid_days is set', async (t) => {
  const dir = await tempDir(t);
  const key = await makeKey(dir, 'signer', 7);
  const repo = path.join(dir, 'repo');
  await publish(dir, repo, 'kernel one\n', key.signing);
  const first = await serialOf(repo);
  await publish(dir, repo, 'kernel two\n', key.signing);
  const second = await serialOf(repo);
  assert.ok(first !== undefined && second !== undefined && second > first, `${String(first)} then ${String(second)}`);
  const { expires } = parseManifestDocument(await readFile(path.join(repo, 'packages.json'), 'utf8'), 'x').header;
  const days = (Date.parse(expires ?? '') - Date.now()) / 86_400_000;
  assert.ok(days > 6.9 && days <= 7, `expires ${String(expires)}`);
});

test('parses allowed_signers with options and principals, leaving out keys for other namespaces and other key types', () => {
  const blob = Buffer.concat([Buffer.from([0, 0, 0, 11]), Buffer.from('ssh-ed25519'), Buffer.from([0, 0, 0, 32]), Buffer.alloc(32, 7)]).toString('base64');
  const text = [
    '# lab keys',
    `autotest,*@lab.example ssh-ed25519 ${blob} old key`,
    `build namespaces="git,autotest-packages" ssh-ed25519 ${blob}`,
    `build namespaces="git" ssh-ed25519 ${blob}`,
    'someone ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC',
    '',
  ].join('\n');
  const { keys, skipped } = parseAllowedSigners(text, SIGNATURE_NAMESPACE);
  assert.deepEqual(
    keys.map((key) => key.line),
    [2, 3],
  );
  assert.equal(skipped.length, 2);
  assert.match(skipped.join('; '), /line 4: not allowed for the namespace autotest-packages; line 5: ssh-rsa keys are not supported/);
});

for (const scheme of ['local', 'http'] as const) {
  test(`a tampering ${scheme} mirror (package replaced, both index files recomputed, old signature kept) is passed over and its bytes never used`, async (t) => {
    const dir = await tempDir(t);
    const key = await makeKey(dir, 'signer');
    const origin = path.join(dir, 'origin');
    await publish(dir, origin, 'the real kernel\n', key.signing);
    const mirror = path.join(dir, 'mirror');
    await cp(origin, mirror, { recursive: true });
    await tamper(mirror, 'evil kernel\n');
    const mirrorLocation = scheme === 'http' ? await serve(t, mirror) : local(mirror);
    const got = await fetchKernel(dir, [mirrorLocation, local(origin)], trusting([key]));
    assert.equal(got.content, 'the real kernel\n');
    assert.equal(got.repository, origin);
    assert.equal(got.passedOver.length, 1);
    assert.match(got.passedOver[0] ?? '', /packages\.json\.sig is wrong: its signature by SHA256:\S+ does not match the manifest; not believed/);
  });
}

test('a mirror that changes only packages.checksum changes nothing', async (t) => {
  const dir = await tempDir(t);
  const key = await makeKey(dir, 'signer');
  const repo = path.join(dir, 'repo');
  await publish(dir, repo, 'the real kernel\n', key.signing);
  await writeFile(path.join(repo, 'packages.checksum'), `${'0'.repeat(32)}  ${KERNEL}\n${'1'.repeat(32)}  test-evil.tar.bz2\n`);
  const got = await fetchKernel(dir, [await serve(t, repo)], trusting([key]));
  assert.equal(got.content, 'the real kernel\n');
  assert.deepEqual(got.passedOver, []);
});

test('an unsigned repository is passed over when signatures are required, and read as before when they are not', async (t) => {
  const dir = await tempDir(t);
  const key = await makeKey(dir, 'signer');
  const unsigned = path.join(dir, 'unsigned');
  await publish(dir, unsigned, 'unsigned kernel\n', undefined);
  const signed = path.join(dir, 'signed');
  await publish(dir, signed, 'signed kernel\n', key.signing);
  const got = await fetchKernel(dir, [local(unsigned), local(signed)], trusting([key]));
  assert.equal(got.content, 'signed kernel\n');
  assert.match(got.passedOver[0] ?? '', /unsigned: has no packages\.json\.sig \(unsigned\) and require_signature is on/);
  await assert.rejects(fetchKernel(dir, [local(unsigned)], trusting([key]), 'out2'), (error: Error & { code?: string }) => {
    assert.equal(error.code, 'ERR_ALL_REPOSITORIES_FAILED');
    assert.match(error.message, /unsigned: has no packages\.json\.sig/);
    return true;
  });
  assert.equal((await fetchKernel(dir, [local(unsigned)], trusting([key], false), 'out3')).content, 'unsigned kernel\n');
});

test('an older signed index is refused after a newer one was seen from the same repository (rollback), by every later fetcher of the machine', async (t) => {
  const dir = await tempDir(t);
  const key = await makeKey(dir, 'signer');
  const repo = path.join(dir, 'repo');
  await publish(dir, repo, 'old kernel\n', key.signing);
  const old = path.join(dir, 'old');
  await cp(repo, old, { recursive: true });
  await publish(dir, repo, 'new kernel\n', key.signing);
  assert.equal((await fetchKernel(dir, [local(repo)], trusting([key]))).content, 'new kernel\n');
  // The repository's folder now holds the old, validly signed pair (a mirror rolled back).
  await cp(old, repo, { recursive: true, force: true });
  await assert.rejects(fetchKernel(dir, [local(repo)], trusting([key]), 'out2'), /has serial \d+, older than serial \d+ seen from it before \(rolled back\)/);
});

test('an expired signed index is refused, saying when it expired', async (t) => {
  const dir = await tempDir(t);
  const key = await makeKey(dir, 'signer', 0.00001);
  const repo = path.join(dir, 'repo');
  await publish(dir, repo, 'kernel\n', key.signing);
  const { expires } = parseManifestDocument(await readFile(path.join(repo, 'packages.json'), 'utf8'), 'x').header;
  // Waited for by the clock the check uses, not by a timing assertion.
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, Date.parse(expires ?? '') - Date.now() + 50)));
  await assert.rejects(fetchKernel(dir, [local(repo)], trusting([key])), new RegExp(`expired at ${(expires ?? '').replace(/[.]/g, '\\.')}`));
});

test('during a key rotation both trusted keys are believed, and a key not in trusted_keys is refused', async (t) => {
  const dir = await tempDir(t);
  const [oldKey, newKey, stranger] = await Promise.all([makeKey(dir, 'old'), makeKey(dir, 'new'), makeKey(dir, 'stranger')]);
  const a = path.join(dir, 'a');
  const b = path.join(dir, 'b');
  const c = path.join(dir, 'c');
  await publish(dir, a, 'from a\n', oldKey.signing);
  await publish(dir, b, 'from b\n', newKey.signing);
  await publish(dir, c, 'from c\n', stranger.signing);
  const signers = await allowedSigners(dir, [oldKey, newKey]);
  const config = await loadConfig({ file: await writeConfig(dir, { trusted_keys: signers }) });
  const settings = config.packages.fetch;
  assert.equal(settings.trust?.required, true, 'require_signature defaults to true with trusted_keys');
  assert.equal((await fetchKernel(dir, [local(a)], settings, 'o1')).content, 'from a\n');
  assert.equal((await fetchKernel(dir, [local(b)], settings, 'o2')).content, 'from b\n');
  await assert.rejects(fetchKernel(dir, [local(c)], settings, 'o3'), /signed by a key not in trusted_keys \(SHA256:/);
});

test('a reader never takes a pair being replaced by a packager for a forgery', async (t) => {
  const dir = await tempDir(t);
  const key = await makeKey(dir, 'signer');
  const repo = path.join(dir, 'repo');
  await publish(dir, repo, 'kernel\n', key.signing);
  const target = createLocalTarget({ kind: 'local', path: repo, text: repo }, { signing: key.signing });
  const writer = { done: false };
  const writing = (async () => {
    for (let i = 0; i < 40; i += 1) await target.sign();
    writer.done = true;
  })();
  const failures: string[] = [];
  let reads = 0;
  while (!writer.done) {
    const fetcher = await PackageFetcher.create([local(repo)], trusting([key]));
    await fetcher.lookup([KERNEL]).catch((error: unknown) => {
      failures.push(String(error));
    });
    reads += 1;
  }
  await writing;
  assert.ok(reads > 0);
  assert.deepEqual(failures, []);
});

test('require_signature without trusted_keys, and an unreadable trusted_keys or signing_key, are config errors naming file, line and key', async (t) => {
  const dir = await tempDir(t);
  await assert.rejects(
    loadConfig({ file: await writeConfig(dir, { require_signature: 'true' }, 'a.ini') }),
    /a\.ini:2: \[PACKAGES\] require_signature = "true" \(trusted_keys is not set: no signature could ever be verified\): allowed is false, or true together with trusted_keys/,
  );
  await assert.rejects(
    loadConfig({ file: await writeConfig(dir, { trusted_keys: 'missing' }, 'b.ini') }),
    /b\.ini:2: \[PACKAGES\] trusted_keys = .*missing: cannot read it \(ENOENT\)/,
  );
  await writeFile(path.join(dir, 'not-a-key'), 'hello\n');
  const config = await loadConfig({ file: await writeConfig(dir, { signing_key: 'not-a-key' }, 'c.ini') });
  await assert.rejects(loadIndexSigning(config.packages), /c\.ini:2: \[PACKAGES\] signing_key = .*not-a-key: not an OpenSSH private key/);
});

test('packager sign signs every upload location with a new serial, and packager verify reports an unsigned or tampered index', async (t) => {
  const dir = await tempDir(t);
  const key = await makeKey(dir, 'signer');
  const repo = path.join(dir, 'repo');
  await publish(dir, repo, 'kernel\n', undefined);
  const signers = await allowedSigners(dir, [key]);
  const config = await writeConfig(dir, { upload_location: repo, signing_key: key.file, trusted_keys: signers });
  const before = await runCli(['packager', 'verify', '--config', config], { cwd: dir });
  assert.equal(before.code, 1, before.stderr);
  assert.match(before.stdout, /signature: packages\.json\.sig: the index is not signed/);
  const signed = await runCli(['packager', 'sign', '--config', config], { cwd: dir });
  assert.equal(signed.code, 0, signed.stderr);
  assert.match(signed.stdout, new RegExp(`${repo}: signed serial \\d+ with SHA256:`));
  const after = await runCli(['packager', 'verify', '--config', config], { cwd: dir });
  assert.equal(after.code, 0, after.stdout + after.stderr);
  await tamper(repo, 'evil\n');
  const tampered = await runCli(['packager', 'verify', '--config', config], { cwd: dir });
  assert.equal(tampered.code, 1);
  assert.match(tampered.stdout, /signature: packages\.json\.sig: its signature by SHA256:\S+ does not match the manifest/);
});

test('the server signs what it publishes from an upload or a delete with its own signing_key, as ssh-keygen -Y verify accepts', async (t) => {
  const dir = await tempDir(t);
  const key = await makeKey(dir, 'server_key');
  const signers = await allowedSigners(dir, [key]);
  const custom = path.join(dir, 'custom');
  const token = 'server-signing-token-0123456789';
  const config = await loadConfig({
    file: await writeConfig(dir, {
      upload_location: path.join(dir, 'builtin'),
      custom_upload_location: custom,
      custom_download_location: path.join(dir, 'staging'),
      minimum_free_space: '0',
      signing_key: key.file,
    }),
    env: { AUTOTEST_UPLOAD_TOKEN: token },
  });
  const app = await buildServer({ config, logLevel: 'silent', cacheDir: path.join(dir, 'server-cache') });
  t.after(() => app.close());
  const verify = async (): Promise<void> => {
    await execFileAsync('sh', [
      '-c',
      'ssh-keygen -Y verify -f "$1" -I autotest -n autotest-packages -s "$2/packages.json.sig" < "$2/packages.json"',
      'sh',
      signers,
      custom,
    ]);
  };
  const put = await app.inject({
    method: 'PUT',
    url: '/api/custom/kernel-custom.img',
    headers: { authorization: `Bearer ${token}` },
    payload: Buffer.from('a custom kernel'),
  });
  assert.equal(put.statusCode, 200, put.body);
  await verify();
  const first = await serialOf(custom);
  const removed = await app.inject({ method: 'DELETE', url: '/api/custom/kernel-custom.img', headers: { authorization: `Bearer ${token}` } });
  assert.equal(removed.statusCode, 200, removed.body);
  await verify();
  assert.ok(((await serialOf(custom)) ?? 0) > (first ?? 0), 'the delete wrote a newer signed serial');
});

interface OfflineLab {
  dir: string;
  signers: string;
  install: (offline: boolean) => Promise<{ code: number | null; stdout: string; stderr: string }>;
}

/** test-hello published signed into a local repository, and `client install test hello` with trusted_keys. */
async function offlineLab(t: TestContext, validDays?: number): Promise<OfflineLab> {
  const dir = await tempDir(t);
  const key = await makeKey(dir, 'signer');
  const signers = await allowedSigners(dir, [key]);
  const repo = path.join(dir, 'repo');
  const config = await writeConfig(dir, {
    upload_location: repo,
    fetch_location: repo,
    client_dir: EXAMPLE_CLIENT,
    minimum_free_space: '0',
    signing_key: key.file,
    trusted_keys: signers,
    ...(validDays === undefined ? {} : { index_valid_days: validDays.toString() }),
  });
  const published = await runCli(['packager', 'upload', '-t', 'hello', '--config', config], { cwd: dir });
  assert.equal(published.code, 0, published.stderr);
  const install = (offline: boolean): ReturnType<OfflineLab['install']> =>
    runCli(['client', 'install', ...(offline ? ['--offline'] : []), '--config', config, '--install-dir', path.join(dir, 'install'), 'test', 'hello'], {
      cwd: dir,
    });
  return { dir, signers, install };
}

test('offline with trusted_keys, a package is used only while the signed index it was verified against is believed: a key taken out of trusted_keys refuses it', async (t) => {
  const lab = await offlineLab(t);
  const online = await lab.install(false);
  assert.equal(online.code, 0, online.stderr);
  const offline = await lab.install(true);
  assert.equal(offline.code, 0, offline.stderr);
  const stranger = await makeKey(lab.dir, 'stranger');
  await writeFile(lab.signers, `autotest ${stranger.publicLine}\n`);
  const distrusted = await lab.install(true);
  assert.equal(distrusted.code, 1, distrusted.stdout);
  assert.match(
    distrusted.stderr,
    /test hello: test-hello\.tar\.bz2 is in no signed index still believed \(.*repo: packages\.json\.sig is wrong: signed by a key not in trusted_keys/,
  );
});

test('offline with trusted_keys, a package whose signed index has expired since it was verified is refused as it would be online, naming when it expired', async (t) => {
  const dir = await tempDir(t);
  // About 3 s: long enough for the online install to find it unexpired.
  const key = await makeKey(dir, 'signer', 0.00003);
  const repo = path.join(dir, 'repo');
  const uploaded = await uploadPackages({
    clientDir: EXAMPLE_CLIENT,
    selection: { all: false, tests: ['hello'], profilers: [], deps: [], client: false, files: [] },
    locations: [local(repo)],
    compression: 'bzip2',
    minimumFreeBytes: 0,
    cacheDir: path.join(dir, 'pack-cache'),
    signing: key.signing,
  });
  assert.equal(uploaded.ok, true, JSON.stringify(uploaded));
  const options = { locations: [local(repo)], settings: trusting([key]), installDir: path.join(dir, 'install') };
  assert.equal((await installPackages('test', ['hello'], options))[0]?.action, 'fetched');
  const { expires } = parseManifestDocument(await readFile(path.join(repo, 'packages.json'), 'utf8'), 'x').header;
  // Waited for by the clock the check uses, not by a timing assertion.
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, Date.parse(expires ?? '') - Date.now() + 50)));
  await assert.rejects(installPackages('test', ['hello'], { ...options, offline: true }), (error: Error & { code?: string }) => {
    assert.equal(error.code, 'ERR_OFFLINE_MISSING');
    assert.match(
      error.message,
      new RegExp(
        `test hello: test-hello\\.tar\\.bz2 is in no signed index still believed \\(.*its signed packages\\.json expired at ${(expires ?? '').replace(/[.]/g, '\\.')}`,
      ),
    );
    return true;
  });
});

test('with signing_key turned off, the next index write removes the stale packages.json.sig: trusting clients see an unsigned repository, not a forged one', async (t) => {
  const dir = await tempDir(t);
  const key = await makeKey(dir, 'signer');
  const repo = path.join(dir, 'repo');
  await publish(dir, repo, 'signed kernel\n', key.signing);
  await publish(dir, repo, 'unsigned kernel\n', undefined);
  await assert.rejects(readFile(path.join(repo, 'packages.json.sig')), /ENOENT/);
  await assert.rejects(fetchKernel(dir, [local(repo)], trusting([key])), /repo: has no packages\.json\.sig \(unsigned\) and require_signature is on/);
  assert.equal((await fetchKernel(dir, [local(repo)], trusting([key], false), 'out2')).content, 'unsigned kernel\n');
});

/** A real ssh-agent of the test's own, at its own socket, holding `keys`; killed when the test ends. */
async function startAgent(t: TestContext, dir: string, name: string, keys: string[]): Promise<string> {
  const socket = path.join(dir, `${name}.sock`);
  const { stdout } = await execFileAsync('ssh-agent', ['-s', '-a', socket]);
  const pid = Number(/SSH_AGENT_PID=(\d+)/.exec(stdout)?.[1]);
  assert.ok(pid > 0, stdout);
  t.after(() => {
    process.kill(pid);
  });
  for (const key of keys) await execFileAsync('ssh-add', ['-q', key], { env: { ...process.env, SSH_AUTH_SOCK: socket } });
  return socket;
}

test('a signing_key naming a public key signs through ssh-agent, as ssh-keygen -Y verify accepts, and an agent without that key, or none, is a config error naming the key', async (t) => {
  const dir = await tempDir(t);
  const [key, other] = await Promise.all([makeKey(dir, 'agent_key'), makeKey(dir, 'other_key')]);
  const socket = await startAgent(t, dir, 'agent', [key.file]);
  const wrongAgent = await startAgent(t, dir, 'wrong', [other.file]);
  // Only the agent holds the private key now.
  await rm(key.file);
  const repo = path.join(dir, 'repo');
  const config = await writeConfig(dir, { upload_location: repo, client_dir: EXAMPLE_CLIENT, minimum_free_space: '0', signing_key: `${key.file}.pub` });
  const upload = await runCli(['packager', 'upload', '-t', 'hello', '--config', config], { cwd: dir, env: { SSH_AUTH_SOCK: socket } });
  assert.equal(upload.code, 0, upload.stdout + upload.stderr);
  const signers = await allowedSigners(dir, [key]);
  const verified = await execFileAsync('sh', [
    '-c',
    'ssh-keygen -Y verify -f "$1" -I autotest -n autotest-packages -s "$2/packages.json.sig" < "$2/packages.json"',
    'sh',
    signers,
    repo,
  ]);
  assert.match(verified.stdout, /Good "autotest-packages" signature for autotest/);
  for (const [env, why] of [
    [wrongAgent, 'a public key that ssh-agent at \\S+ does not hold \\(ssh-add the private key\\)'],
    ['', 'a public key, whose private key must be held by ssh-agent, but SSH_AUTH_SOCK is not set'],
  ] as const) {
    const refused = await runCli(['packager', 'upload', '-t', 'hello', '--config', config], { cwd: dir, env: { SSH_AUTH_SOCK: env } });
    assert.equal(refused.code, 2, refused.stdout + refused.stderr);
    assert.match(refused.stderr, new RegExp(`\\[PACKAGES\\] signing_key = \\S+agent_key\\.pub: ${why}`));
  }
});
