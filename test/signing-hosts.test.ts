import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import test, { type TestContext } from 'node:test';
import { digestFile, formatChecksumFile, formatManifest, parseManifestDocument } from '../src/packages/index.js';
import { startNginx } from './fixtures/nginx.js';
import { copyExampleTree, execFileAsync, pathWithout, ROOT, runCli, tempDir, writeConfig } from './helpers.js';

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

/** A lab key made by ssh-keygen, the repository published signed with it and served by nginx. */
async function signedLab(t: TestContext): Promise<SignedLab> {
  const dir = await tempDir(t);
  const clientDir = await copyExampleTree(dir);
  const keyFile = path.join(dir, 'signing_key');
  await execFileAsync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'lab', '-f', keyFile]);
  const signers = path.join(dir, 'allowed_signers');
  // Another principal than "autotest": trusted_keys believes every key it lists, whatever its name.
  await writeFile(signers, `packager@lab ${(await readFile(`${keyFile}.pub`, 'utf8')).trim()}\n`);
  const repo = path.join(dir, 'www', 'builtin');
  await mkdir(repo, { recursive: true });
  const nginx = await startNginx({ root: path.join(dir, 'www') });
  t.after(() => nginx.stop());
  const config = await writeConfig(dir, {
    upload_location: repo, fetch_location: `${nginx.url}/builtin`, client_dir: clientDir, minimum_free_space: '0', signing_key: keyFile, trusted_keys: signers,
  });
  const publish = await runCli(['packager', 'upload', '--all', '--config', config], { cwd: dir });
  assert.equal(publish.code, 0, publish.stderr);
  return { dir, repo, config, keyFile, signers };
}

async function runAutoservOnLocalhost(lab: SignedLab, env: NodeJS.ProcessEnv = {}): Promise<{ summary: Summary; hostDir: string; output: string }> {
  const hostDir = path.join(lab.dir, 'host');
  const result = await runCli(['autoserv', '-m', 'localhost', '-r', path.join(lab.dir, 'results'), '--config', lab.config, '--host-dir', hostDir, CONTROL], { cwd: lab.dir, env });
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
  const transfers = JSON.parse(await readFile(path.join(lab.dir, 'results', summary.host, 'transfers.json'), 'utf8')) as { transfers: { repository: string }[] };
  return [...new Set(transfers.transfers.map((r) => r.repository))];
}

test('autoserv installs the client by packaging from a signed repository once ssh-keygen on the host verifies it, and the job\'s client verifies its index with the trusted keys it was sent', async (t) => {
  const lab = await signedLab(t);
  const { summary, hostDir, output } = await runAutoservOnLocalhost(lab);
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

test('autoserv refuses a tampering repository (client replaced, both index files recomputed, old signature kept) for the client install, copies the client and says why; the job\'s client refuses it too', async (t) => {
  const lab = await signedLab(t);
  const forgedMd5 = await tamperClient(lab.repo);
  const { summary, hostDir, output } = await runAutoservOnLocalhost(lab);
  assert.equal(summary.clientInstall, 'light copy', output);
  assert.match(summary.why.join('; '), /packaging: .*\/builtin: packages\.json\.sig does not verify with trusted_keys; not believed/);
  assert.notEqual((await readFile(path.join(hostDir, 'client', '.checksum'), 'utf8').catch(() => '')).trim(), forgedMd5, 'the forged client was never installed');
  assert.equal(summary.status, 'GOOD', output);
  assert.deepEqual(await transferSources(lab, summary), ['autoserv'], 'every package came from autoserv, none from the forged index');
  assert.match(output, /does not match the manifest; not believed/);
});

test('a host without ssh-keygen cannot verify: packaging is refused with the reason and the client copied, and the job\'s client still verifies the repository itself', async (t) => {
  const lab = await signedLab(t);
  const { summary, output } = await runAutoservOnLocalhost(lab, { PATH: await pathWithout(lab.dir, 'ssh-keygen') });
  assert.equal(summary.clientInstall, 'light copy', output);
  assert.match(summary.why.join('; '), /packaging: refused: trusted_keys is set and the host cannot verify signed repositories \(no ssh-keygen on the host\)/);
  assert.equal(summary.status, 'GOOD', output);
  const sources = await transferSources(lab, summary);
  assert.ok(sources.length === 1 && sources[0]?.endsWith('/builtin'), `the job fetched from the verified repository: ${sources.join(', ')}`);
});
