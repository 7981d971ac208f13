import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import { makeGitRepository, startGitDaemon } from './fixtures/git.js';
import { createNamespaceHost } from './fixtures/netns.js';
import { startNginx } from './fixtures/nginx.js';
import { runChecked } from './fixtures/process.js';
import { sshRun, startSshd, writeSshConfig } from './fixtures/sshd.js';
import { tempDir } from './helpers.js';

function refuses(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    socket.setTimeout(2000, () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', () => {
      resolve(true);
    });
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('a test sshd accepts the throwaway key and runs a command', async (t) => {
  const server = await startSshd();
  t.after(() => server.stop());
  const result = await server.run(['printf', '%s|', 'two words', "it's", '$HOME']);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout, "two words|it's|$HOME|");
  assert.equal(result.stderr, '');

  // Plain `ssh -F`, as the product calls it, also gets in; a stranger's key does not.
  const viaConfig = await sshRun(server.configFile, server.alias, ['sh', '-c', 'printf "%s %s" "$LOGNAME" "$(id -u)"']);
  assert.equal(viaConfig.stdout, `${server.user} 0`, 'logged in as the fixture account, a root alias');
  const denied = await runChecked('ssh', [
    '-F',
    '/dev/null',
    '-i',
    '/dev/null',
    '-p',
    String(server.port),
    '-o',
    'BatchMode=yes',
    '-o',
    'IdentitiesOnly=yes',
    '-o',
    'StrictHostKeyChecking=no',
    '-o',
    'UserKnownHostsFile=/dev/null',
    '-o',
    'LogLevel=ERROR',
    `${server.user}@${server.address}`,
    'true',
  ]).then(
    () => false,
    () => true,
  );
  assert.ok(denied, 'a connection without the client key must be refused');

  // stop() leaves nothing behind.
  await server.stop();
  assert.ok(!alive(server.pid));
  await assert.rejects(stat(server.dir));
  assert.ok(await refuses(server.address, server.port));
});

test('a test ssh host runs no start-up file of any account, unless the test gives it one', async (t) => {
  const [quiet, chatty] = await Promise.all([startSshd(), startSshd({ startup: 'echo "Welcome to lab host 7"\n' })]);
  t.after(() => Promise.all([quiet.stop(), chatty.stop()]));
  const probe = ['sh', '-c', 'printf "[%s]" "$HOME"'];
  const plain = await quiet.run(probe);
  assert.equal(plain.stdout, '[/var/lib/autotest-fx]', 'a home of its own, not /root with its ~/.bashrc');
  assert.equal(plain.stderr, '');
  const noisy = await chatty.run(probe);
  assert.equal(noisy.stdout, 'Welcome to lab host 7\n[/var/lib/autotest-fx-startup]', 'the given start-up text comes first on stdout');
});

test('one ssh config reaches several test sshds, over scp and sftp too', async (t) => {
  const dir = await tempDir(t);
  const servers = await Promise.all([startSshd(), startSshd()]);
  t.after(() => Promise.all(servers.map((s) => s.stop())));
  const config = await writeSshConfig(servers, path.join(dir, 'ssh_config'));
  const [a, b] = servers;
  assert.notEqual(a.port, b.port);
  for (const server of servers) {
    const result = await sshRun(config, server.alias, ['cat', path.join(server.dir, 'sshd.pid')]);
    assert.equal(result.stdout.trim(), String(server.pid));
  }
  const payload = randomBytes(4096);
  await writeFile(path.join(dir, 'payload'), payload);
  await runChecked('scp', ['-q', '-F', config, path.join(dir, 'payload'), `${a.alias}:${path.join(dir, 'copied')}`]);
  assert.deepEqual(await readFile(path.join(dir, 'copied')), payload);
  await runChecked('sftp', ['-q', '-F', config, '-b', '-', b.alias], { input: `get ${path.join(dir, 'copied')} ${path.join(dir, 'fetched')}\n` });
  assert.deepEqual(await readFile(path.join(dir, 'fetched')), payload);
});

test('nginx serves a folder with Range and an index', async (t) => {
  const root = await tempDir(t);
  const body = randomBytes(10_000);
  await writeFile(path.join(root, 'pkg.tar.bz2'), body);
  const server = await startNginx({ root });
  t.after(() => server.stop());

  const whole = await fetch(`${server.url}/pkg.tar.bz2`);
  assert.equal(whole.status, 200);
  assert.deepEqual(Buffer.from(await whole.arrayBuffer()), body);

  const part = await fetch(`${server.url}/pkg.tar.bz2`, { headers: { Range: 'bytes=100-199' } });
  assert.equal(part.status, 206);
  assert.equal(part.headers.get('content-range'), `bytes 100-199/${body.length}`);
  assert.deepEqual(Buffer.from(await part.arrayBuffer()), body.subarray(100, 200));

  const index = await fetch(`${server.url}/`);
  assert.match(await index.text(), /href="pkg\.tar\.bz2"/);
  assert.equal((await fetch(`${server.url}/missing`)).status, 404);
});

test('a namespace host runs its own sshd and nginx reachable only at its address', async (t) => {
  const host = await createNamespaceHost(7);
  t.after(() => host.destroy());
  assert.match(host.address, /^10\.213\.\d+\.2$/);

  // Only the link's subnet is routed: no way out of the namespace.
  const routes = await host.exec(['ip', '-4', 'route', 'show']);
  assert.equal(routes.code, 0, routes.stderr);
  assert.doesNotMatch(routes.stdout, /default/);
  assert.match(routes.stdout, new RegExp(`^${host.address.replace(/\.2$/, '.0').replaceAll('.', '\\.')}/24 `, 'm'));

  const sshd = await startSshd({ netns: host.name });
  t.after(() => sshd.stop());
  assert.equal(sshd.address, host.address);
  const seen = await sshd.run(['ip', '-4', '-o', 'addr', 'show']);
  assert.equal(seen.code, 0, seen.stderr);
  assert.match(seen.stdout, new RegExp(` ${host.address.replaceAll('.', '\\.')}/24 `));
  // The session saw the namespace's interfaces, not this host's.
  assert.doesNotMatch(seen.stdout, new RegExp(` ${host.hostSideAddress.replaceAll('.', '\\.')}/`));
  assert.ok(await refuses('127.0.0.1', sshd.port));

  const root = await tempDir(t);
  await writeFile(path.join(root, 'hello.txt'), 'hello from the namespace\n');
  const nginx = await startNginx({ root, netns: host.name });
  t.after(() => nginx.stop());
  assert.equal(await (await fetch(`${nginx.url}/hello.txt`)).text(), 'hello from the namespace\n');

  await host.destroy();
  assert.ok(!alive(sshd.pid));
  const left = await runChecked('ip', ['netns', 'list']);
  assert.doesNotMatch(left.stdout, new RegExp(`^${host.name}\\b`, 'm'));
});

test('git archive --remote fetches a file from the test git daemon', async (t) => {
  const base = await tempDir(t);
  const checksum = 'd41d8cd98f00b204e9800998ecf8427e  client-empty.tar.bz2\n';
  await makeGitRepository(path.join(base, 'repo.git'), { 'packages.checksum': checksum, 'sub/dir/file.bin': randomBytes(64) });
  const daemon = await startGitDaemon(base);
  t.after(() => daemon.stop());

  const out = path.join(base, 'out.tar');
  await runChecked('git', ['archive', `--remote=${daemon.url('repo.git')}`, `--output=${out}`, 'main', 'packages.checksum']);
  const extracted = await runChecked('tar', ['-xOf', out, 'packages.checksum']);
  assert.equal(extracted.stdout, checksum);
  const listing = await runChecked('tar', ['-tf', out]);
  assert.deepEqual(listing.stdout.trim().split('\n'), ['packages.checksum']);

  const missing = await runChecked('git', ['archive', `--remote=${daemon.url('nope.git')}`, 'main']).then(
    () => false,
    () => true,
  );
  assert.ok(missing, 'an unknown repository must fail');
});
