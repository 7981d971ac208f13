import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import net from 'node:net';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { parseFetchLocation, type FetchSettings } from '../src/config/index.js';
import { FetchFailure } from '../src/repositories/read-failure.js';
import { gitRepository } from '../src/repositories/git/read.js';
import type { FetchRepository } from '../src/repositories/types.js';
import { makeGitRepository, startGitDaemon } from './fixtures/git.js';
import { tempDir } from './helpers.js';

const SETTINGS: FetchSettings = { connectTimeoutMs: 5000, timeoutMs: 60_000, retries: 0, cooldownMs: 0, maxSizeBytes: 1e9 };
const PACKAGE = 'dep-libfoo.tar.bz2';
const BODY = Buffer.from('the bytes of a package');

function repositoryAt(url: string): FetchRepository {
  return gitRepository({ kind: 'git', url, branch: undefined, text: url }, SETTINGS);
}

/** A git daemon over `repos` (name to files), stopped when the test ends. */
async function serveRepositories(t: TestContext, repos: Record<string, Record<string, Buffer | string>>): Promise<(name: string) => FetchRepository> {
  const base = await tempDir(t);
  for (const [name, files] of Object.entries(repos)) await makeGitRepository(path.join(base, name), files);
  const daemon = await startGitDaemon(base);
  t.after(() => daemon.stop());
  return (name) => repositoryAt(daemon.url(name));
}

async function bodyOf(repository: FetchRepository, file: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of (await repository.open(file, 0, SETTINGS.timeoutMs)).stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function failureOf(error: unknown): FetchFailure {
  assert.ok(error instanceof FetchFailure, String(error));
  return error;
}

test("a git repository's index is read past other packages.* files of any size, which are neither kept nor bounded", async (t) => {
  const repository = (
    await serveRepositories(t, {
      'big.git': {
        'packages.checksum': `${createHash('md5').update(BODY).digest('hex')}  ${PACKAGE}\n`,
        [PACKAGE]: BODY,
        // Past the 32 MiB bound of an index file: matched by the glob, but not an index file.
        'packages.json.bak': Buffer.alloc(33 * 1024 * 1024),
      },
    })
  )('big.git');
  const index = await repository.readIndex();
  assert.deepEqual([...index.keys()], [PACKAGE]);
  assert.deepEqual(await bodyOf(repository, PACKAGE), BODY);
});

test("a git server that cannot be reached, or a repository with no index file, fails with git's own words, never as a repository without packages.checksum", async (t) => {
  const repositories = await serveRepositories(t, {
    'empty.git': { README: 'no packages here\n' },
    'links.git': { 'packages.checksum': `${'0'.repeat(32)}  ${PACKAGE}\n` },
  });
  await assert.rejects(repositories('empty.git').readIndex(), (error: unknown) => {
    assert.match(failureOf(error).message, /empty\.git.*did not match any files/s);
    assert.doesNotMatch(failureOf(error).message, /has no packages\.checksum/);
    return true;
  });
  const stopped = await startGitDaemon(await tempDir(t));
  await stopped.stop();
  await assert.rejects(repositoryAt(`git://127.0.0.1:${stopped.port.toString()}/gone.git`).readIndex(), (error: unknown) => {
    assert.match(failureOf(error).message, /gone\.git.*unable to connect/s);
    assert.equal(failureOf(error).notFound, false);
    return true;
  });
  // A package the index names that git does not have: a failure with git's words, not a 404 taken before git has answered.
  await assert.rejects(bodyOf(repositories('links.git'), PACKAGE), (error: unknown) => {
    assert.match(failureOf(error).message, /did not match any files/);
    return true;
  });
});

test('a git location whose branch starts with "-" is refused before git could take it for an option', () => {
  for (const text of ['git://127.0.0.1:9/repo:-o/tmp/archive', '/srv/packages.git:--list']) {
    assert.throws(() => parseFetchLocation(text, '/'), /branch "-.*" cannot start with "-"/);
  }
  assert.deepEqual(parseFetchLocation('git://127.0.0.1:9/repo:release-2', '/'), {
    kind: 'git',
    url: 'git://127.0.0.1:9/repo',
    branch: 'release-2',
    text: 'git://127.0.0.1:9/repo:release-2',
  });
});

test('a git server over ssh that accepts but never answers fails within fetch_connect_timeout and puts the repository in cool-down, long before fetch_timeout', async (t) => {
  // A TCP listener that says nothing: ssh waits for its banner.
  const sockets = new Set<net.Socket>();
  const silent = net.createServer((socket) => sockets.add(socket));
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    silent.close();
  });
  const { port } = silent.address() as net.AddressInfo;
  const url = `ssh://git@127.0.0.1:${String(port)}/srv/repo.git`;
  const repository = gitRepository({ kind: 'git', url, branch: undefined, text: url }, { ...SETTINGS, connectTimeoutMs: 1000, timeoutMs: 120_000 });
  await assert.rejects(repository.readIndex(), (error: unknown) => {
    const failure = failureOf(error);
    assert.equal(failure.timedOut, false, `not the fetch_timeout of 120 s: ${failure.message}`);
    assert.equal(failure.down, true, `a host that does not answer goes into cool-down: ${failure.message}`);
    return true;
  });
});

test("git's own ssh command (core.sshCommand of ~/.gitconfig: a key, a port, a proxy) is the one git runs, not replaced by the ConnectTimeout one", async (t) => {
  const dir = await tempDir(t);
  const called = path.join(dir, 'called');
  const ownSsh = path.join(dir, 'own-ssh');
  await writeFile(ownSsh, `#!/bin/sh\necho "$@" > '${called}'\nexit 255\n`, { mode: 0o755 });
  const gitconfig = path.join(dir, 'gitconfig');
  await writeFile(gitconfig, `[core]\n\tsshCommand = ${ownSsh}\n`);
  const saved = { ...process.env };
  process.env.GIT_CONFIG_GLOBAL = gitconfig;
  delete process.env.GIT_SSH_COMMAND;
  delete process.env.GIT_SSH;
  t.after(() => {
    process.env = saved;
  });
  await assert.rejects(repositoryAt('ssh://git@127.0.0.1:9/srv/repo.git').readIndex());
  assert.match(await readFile(called, 'utf8').catch(() => 'never called'), /127\.0\.0\.1/, "core.sshCommand of the user's git config ran");
});

test('a file the git repository does not have is no outage: however long git took to say so, the repository is not put in cool-down', async (t) => {
  const base = await tempDir(t);
  await makeGitRepository(path.join(base, 'links.git'), { 'packages.checksum': `${'0'.repeat(32)}  ${PACKAGE}\n` });
  const daemon = await startGitDaemon(base);
  t.after(() => daemon.stop());
  const url = daemon.url('links.git');
  // fetch_connect_timeout at its least (0.01 s): a server on a slow link is in the same place at 5 s.
  const repository = gitRepository({ kind: 'git', url, branch: undefined, text: url }, { ...SETTINGS, connectTimeoutMs: 10 });
  await assert.rejects((async () => (await repository.open(PACKAGE, 0, SETTINGS.timeoutMs)).stream.resume())(), (error: unknown) => {
    assert.match(failureOf(error).message, /did not match any files/);
    assert.equal(failureOf(error).down, false, 'a repository that answered is up');
    return true;
  });
});
