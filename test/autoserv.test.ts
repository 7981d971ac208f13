import assert from 'node:assert/strict';
import { chmod, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { createNamespaceHost, type NamespaceHost } from './fixtures/netns.js';
import { startNginx } from './fixtures/nginx.js';
import { startSshd, writeSshConfig, type SshServer } from './fixtures/sshd.js';
import { copyExampleTree, ROOT, runCli, tempDir, writeConfig } from './helpers.js';
import { PassThrough } from 'node:stream';
import { answerPackageRequest } from '../src/autoserv/index.js';

interface Lab {
  dir: string;
  hosts: { ns: NamespaceHost; sshd: SshServer; url: string }[];
  sshConfig: string;
  config: string;
}

/** Three namespace hosts with their own sshd, and the repository served by nginx on the host side of each link. */
async function lab(t: TestContext, count: number, extra: Record<string, string> = {}, startup?: string): Promise<Lab> {
  const dir = await tempDir(t);
  const clientDir = await copyExampleTree(dir);
  for (const [file, text] of Object.entries(extra)) {
    await mkdir(path.dirname(path.join(clientDir, file)), { recursive: true });
    await writeFile(path.join(clientDir, file), text);
  }
  const builtin = path.join(dir, 'www', 'builtin');
  await mkdir(builtin, { recursive: true });
  const hosts: Lab['hosts'] = [];
  for (let i = 0; i < count; i += 1) {
    const ns = await createNamespaceHost(20 + i);
    t.after(() => ns.destroy());
    const sshd = await startSshd({ netns: ns.name, startup });
    t.after(() => sshd.stop());
    const nginx = await startNginx({
      root: dir,
      listenAddress: ns.hostSideAddress,
      extraLocations: `location /packages/ { alias ${path.join(dir, 'www')}/; }`,
    });
    t.after(() => nginx.stop());
    hosts.push({ ns, sshd, url: `${nginx.url}/packages/builtin` });
  }
  const sshConfig = await writeSshConfig(
    hosts.map((h) => h.sshd),
    path.join(dir, 'ssh_config'),
  );
  // Each host reaches only the nginx on its own link; the others fail at once (no route).
  const config = await writeConfig(dir, {
    upload_location: builtin,
    fetch_location: hosts.map((h) => h.url).join(', '),
    client_dir: clientDir,
    minimum_free_space: '0',
  });
  const publish = await runCli(['packager', 'upload', '--all', '--config', config], { cwd: dir });
  assert.equal(publish.code, 0, publish.stderr);
  return { dir, hosts, sshConfig, config };
}

/**
 * A folder holding an `ssh` that logs every invocation (its destination, one line, to
 * $AUTOTEST_TEST_SSH_LOG) and runs the real one: put first on PATH, it counts the commands
 * autoserv sends. `ssh -O exit` (closing a master connection) runs no command and is not logged.
 */
async function countingSsh(dir: string): Promise<{ env: NodeJS.ProcessEnv; commandsTo: (alias: string) => Promise<number> }> {
  const bin = path.join(dir, 'counting-bin');
  await mkdir(bin, { recursive: true });
  const log = path.join(dir, 'ssh-commands.log');
  // One line per command: the destination, the word after ssh's "--".
  await writeFile(
    path.join(bin, 'ssh'),
    [
      '#!/bin/sh',
      'host=; after=; exit_only=',
      'for a in "$@"; do',
      '  if [ -n "$after" ] && [ -z "$host" ]; then host=$a; fi',
      '  if [ "$a" = "--" ]; then after=1; fi',
      '  if [ "$a" = "-O" ]; then exit_only=1; fi',
      'done',
      'if [ -z "$exit_only" ]; then printf \'%s\\n\' "$host" >> "$AUTOTEST_TEST_SSH_LOG"; fi',
      'exec "$AUTOTEST_TEST_REAL_SSH" "$@"',
      '',
    ].join('\n'),
  );
  await chmod(path.join(bin, 'ssh'), 0o755);
  const realSsh =
    (process.env.PATH ?? '')
      .split(':')
      .map((d) => path.join(d, 'ssh'))
      .find((file) => existsSync(file)) ?? '/usr/bin/ssh';
  return {
    env: { PATH: `${bin}:${process.env.PATH ?? ''}`, AUTOTEST_TEST_SSH_LOG: log, AUTOTEST_TEST_REAL_SSH: realSsh },
    commandsTo: async (alias) => (await readFile(log, 'utf8').catch(() => '')).split('\n').filter((line) => line === alias).length,
  };
}

interface Summary {
  host: string;
  clientInstall: string;
  why: string[];
  status: string;
  tests: { name: string; status: string }[];
  setup: { bytes: number };
}

test('autoserv runs the example job on three namespace hosts at once: the client through packaging, exactly the packages needed, results back; the second run moves no package bytes and costs each warm host one SSH command, the job itself', async (t) => {
  const { dir, hosts, sshConfig, config } = await lab(t, 3);
  const machines = hosts.map((h) => h.sshd.alias).join(',');
  const control = path.join(ROOT, 'example', 'jobs', 'example.control.mjs');
  const first = await countingSsh(path.join(dir, 'first'));
  const result = await runCli(
    ['autoserv', '-m', machines, '-r', path.join(dir, 'results-1'), '--config', config, '--host-dir', path.join(dir, 'hosts', '{host}'), control],
    { cwd: dir, env: { AUTOTEST_SSH_CONFIG: sshConfig, ...first.env } },
  );
  assert.equal(result.code, 0, result.stdout + result.stderr);
  const summaries = JSON.parse(await readFile(path.join(dir, 'results-1', 'summary.json'), 'utf8')) as Summary[];
  assert.equal(summaries.length, 3);
  for (const summary of summaries) {
    assert.equal(summary.clientInstall, 'packaging', summary.host);
    assert.equal(summary.status, 'GOOD');
    assert.deepEqual(summary.tests, [
      { name: 'sleeptest', status: 'GOOD' },
      { name: 'dbench', status: 'GOOD' },
    ]);
    const transfers = JSON.parse(await readFile(path.join(dir, 'results-1', summary.host, 'transfers.json'), 'utf8')) as {
      transfers: { file: string; action: string }[];
    };
    assert.deepEqual(transfers.transfers.map((r) => r.file).sort(), [
      'dep-libaio.tar.bz2',
      'profiler-vmstat.tar.bz2',
      'test-dbench.tar.bz2',
      'test-sleeptest.tar.bz2',
    ]);
    assert.match(await readFile(path.join(dir, 'results-1', summary.host, 'status.log'), 'utf8'), /^END GOOD\t----/m);
    assert.match(result.stdout, new RegExp(`\\[${summary.host}\\] \\tSTART\\tsleeptest`), 'status lines are streamed');
    // Cold: the check that finds no client, the install, the job.
    assert.equal(await first.commandsTo(summary.host), 3, `${summary.host}: SSH commands of a cold run`);
  }
  const warm = await countingSsh(path.join(dir, 'second'));
  const second = await runCli(
    ['autoserv', '-m', machines, '-r', path.join(dir, 'results-2'), '--config', config, '--host-dir', path.join(dir, 'hosts', '{host}'), control],
    { cwd: dir, env: { AUTOTEST_SSH_CONFIG: sshConfig, ...warm.env } },
  );
  assert.equal(second.code, 0, second.stdout + second.stderr);
  for (const summary of JSON.parse(await readFile(path.join(dir, 'results-2', 'summary.json'), 'utf8')) as Summary[]) {
    assert.equal(summary.clientInstall, 'packaging', summary.host);
    assert.equal(summary.setup.bytes, 0, `${summary.host} moved no bytes`);
    const transfers = JSON.parse(await readFile(path.join(dir, 'results-2', summary.host, 'transfers.json'), 'utf8')) as { totals: { bytes: number } };
    assert.equal(transfers.totals.bytes, 0);
    assert.match(await readFile(path.join(dir, 'results-2', summary.host, 'status.log'), 'utf8'), /^END GOOD\t----/m, 'the results came back');
    assert.equal(await warm.commandsTo(summary.host), 1, `${summary.host}: SSH commands of a warm run`);
  }
  assert.deepEqual(
    (await readdir(path.join(dir, 'hosts', hosts[0]?.sshd.alias ?? ''))).filter((name) => /^(control|client)-/.test(name)),
    [],
    'no control file or config left on the host',
  );
});

test('a host whose repositories are unreachable still completes the job: the client by copy, the tests served by autoserv over the SSH channel, and the summary says so, though its start-up files print a banner', async (t) => {
  // The banner shares stdout with the copy, the channel and the results stream, and must corrupt none.
  const { dir, hosts, sshConfig } = await lab(t, 1, {}, 'echo "*** lab host: authorised use only ***"\n');
  const host = hosts[0];
  assert.ok(host);
  // A port on the host's own link where nothing listens: the repository refuses.
  const unreachable = await writeConfig(
    dir,
    { fetch_location: `http://${host.ns.hostSideAddress}:9/packages/builtin`, client_dir: path.join(dir, 'client') },
    'unreachable.ini',
  );
  const result = await runCli(
    [
      'autoserv',
      '-m',
      host.sshd.alias,
      '-r',
      path.join(dir, 'results'),
      '--config',
      unreachable,
      '--host-dir',
      path.join(dir, 'hosts', '{host}'),
      path.join(ROOT, 'example', 'jobs', 'example.control.mjs'),
    ],
    { cwd: dir, env: { AUTOTEST_SSH_CONFIG: sshConfig } },
  );
  assert.equal(result.code, 0, result.stdout + result.stderr);
  const [summary] = JSON.parse(await readFile(path.join(dir, 'results', 'summary.json'), 'utf8')) as Summary[];
  assert.equal(summary?.clientInstall, 'light copy');
  assert.match(summary.why.join(' '), /packaging: [\s\S]*cannot fetch packages\.checksum/);
  assert.equal(summary.status, 'GOOD');
  assert.match(result.stdout, new RegExp(`${host.sshd.alias}: client by light copy`));
  const transfers = JSON.parse(await readFile(path.join(dir, 'results', summary.host, 'transfers.json'), 'utf8')) as {
    transfers: { file: string; repository: string }[];
  };
  assert.deepEqual([...new Set(transfers.transfers.map((r) => r.repository))], ['autoserv']);
  assert.equal(transfers.transfers.length, 4);
});

test('a package request over the autoserv channel that is malformed or tries to leave the client tree is refused', async (t) => {
  const dir = await tempDir(t);
  const clientDir = await copyExampleTree(dir);
  for (const payload of [
    '{"id":1,"type":"test","name":"../../etc"}',
    '{"id":2,"type":"client","name":"autotest"}',
    '{"id":3,"type":"test","name":"a;rm -rf"}',
    '{"id":4,"type":"test"}',
    'not json',
    '{"id":5,"type":"dep","name":"nosuchdep"}',
    '{"id":6,"type":"test","name":"/etc/passwd"}',
  ]) {
    const out = new PassThrough();
    const chunks: Buffer[] = [];
    out.on('data', (c: Buffer) => chunks.push(c));
    await answerPackageRequest(payload, clientDir, dir, out);
    const answer = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { error?: string; size?: number };
    assert.equal(typeof answer.error, 'string', payload);
    assert.equal(answer.size, undefined, `${payload}: no bytes sent`);
  }
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  await answerPackageRequest('{"id":7,"type":"test","name":"hello"}', clientDir, dir, out);
  const all = Buffer.concat(chunks);
  const header = JSON.parse(all.subarray(0, all.indexOf(10)).toString('utf8')) as { id: number; file: string; size: number };
  assert.deepEqual([header.id, header.file], [7, 'test-hello.tar.bz2']);
  assert.equal(all.length - all.indexOf(10) - 1, header.size, 'exactly the announced bytes follow');
});

test('autoserv refuses host names that could reach a shell', async (t) => {
  const dir = await tempDir(t);
  for (const host of ['a;touch x', '-oProxyCommand=x', 'h$(id)', 'user@host:99999']) {
    const result = await runCli(['autoserv', '-m', host, path.join(ROOT, 'example', 'jobs', 'example.control.mjs')], { cwd: dir });
    assert.equal(result.code, 2, host);
    assert.match(result.stderr, /not localhost or \[user@\]host\[:port\]/);
  }
});

test('a host that drops its SSH connection in the middle of the job ends as ABORT with the reason, and autoserv does not hang', async (t) => {
  const { dir, hosts, sshConfig, config } = await lab(t, 1);
  const host = hosts[0];
  assert.ok(host);
  const control = path.join(dir, 'long.control.mjs');
  await writeFile(control, "export default async (job) => { await job.runTest('sleeptest', { seconds: 20 }); };\n");
  const running = runCli(
    ['autoserv', '-m', host.sshd.alias, '-r', path.join(dir, 'results'), '--config', config, '--host-dir', path.join(dir, 'hosts', '{host}'), control],
    { cwd: dir, env: { AUTOTEST_SSH_CONFIG: sshConfig } },
  );
  // Once the test has started on the host, the host's sshd (and every session) goes away.
  const statusLog = path.join(dir, 'hosts', host.sshd.alias.replace(/[^A-Za-z0-9._-]/g, '_'), 'results');
  for (let i = 0; i < 100; i += 1) {
    const found = await readdir(statusLog).catch(() => []);
    if (found.length > 0) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  await host.sshd.stop();
  const result = await running;
  assert.equal(result.code, 1);
  const [summary] = JSON.parse(await readFile(path.join(dir, 'results', 'summary.json'), 'utf8')) as (Summary & { error?: string })[];
  assert.equal(summary?.status, 'ABORT');
  assert.match(summary.error ?? '', /without a report|cannot connect|failed/);
});

test('a failing test, a throwing test and a dep whose setup fails give their status in status.log and in the host summary', async (t) => {
  const { dir, hosts, sshConfig, config } = await lab(t, 1, {
    'tests/failing/failing.mjs': "export async function run() { const e = new Error('wrong numbers'); e.name = 'TestFail'; throw e; }\n",
    'tests/throwing/throwing.mjs': 'export async function run() { return undefined.missing; }\n',
    'deps/broken/broken.mjs': "export async function setup() { throw new Error('cannot build'); }\n",
  });
  const host = hosts[0];
  assert.ok(host);
  const control = path.join(dir, 'faults.control.mjs');
  await writeFile(
    control,
    "export default async (job) => { await job.runTest('failing'); await job.runTest('throwing'); try { await job.setupDep('broken'); } catch {} await job.runTest('hello'); };\n",
  );
  const result = await runCli(
    ['autoserv', '-m', host.sshd.alias, '-r', path.join(dir, 'results'), '--config', config, '--host-dir', path.join(dir, 'hosts', '{host}'), control],
    { cwd: dir, env: { AUTOTEST_SSH_CONFIG: sshConfig } },
  );
  assert.equal(result.code, 1);
  const [summary] = JSON.parse(await readFile(path.join(dir, 'results', 'summary.json'), 'utf8')) as Summary[];
  assert.equal(summary?.status, 'ERROR');
  assert.deepEqual(summary.tests, [
    { name: 'failing', status: 'FAIL' },
    { name: 'throwing', status: 'ERROR' },
    { name: 'hello', status: 'GOOD' },
  ]);
  const log = await readFile(path.join(dir, 'results', summary.host, 'status.log'), 'utf8');
  assert.match(log, /\tFAIL\tfailing\tfailing\t.*wrong numbers/);
  assert.match(log, /\tERROR\t----\tdep\.broken\t.*cannot build/);
  assert.match(log, /^END ERROR\t----/m);
});
