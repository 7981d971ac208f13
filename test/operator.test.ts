/**
 * What an operator meets first, following the README: starting and stopping the server,
 * the example config, the command line's output and exit codes.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { describeDownload } from '../src/cli/progress.js';
import { loadConfig } from '../src/config/index.js';
import { buildServer } from '../src/server/index.js';
import { run } from './fixtures/process.js';
import { EXAMPLE_CLIENT, ROOT, generateTree, runCli, tempDir, writeConfig, type CliResult } from './helpers.js';

/** Resolves with the first match of `pattern` in what `child` prints on stdout, or rejects when the process exits first. */
function waitForOutput(child: ReturnType<typeof spawn>, pattern: RegExp): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let seen = '';
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      seen += chunk;
      const match = pattern.exec(seen);
      if (match) resolve(match);
    });
    child.on('exit', (code, signal) => {
      reject(new Error(`exited (${String(code)}, ${String(signal)}) before printing ${String(pattern)}:\n${seen}`));
    });
  });
}

function refusesConnections(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', () => {
      resolve(true);
    });
  });
}

test('SIGTERM to the pid of npm start stops the server gracefully and frees its port', async (t) => {
  const dir = await tempDir(t);
  const config = path.join(dir, 'global_config.ini');
  await writeFile(
    config,
    `[PACKAGES]\nupload_location: ${path.join(dir, 'builtin')}\ncustom_upload_location: ${path.join(dir, 'custom')}\n[SERVER]\nport: 0\n`,
  );
  // --ignore-scripts leaves out the prestart build: the test runs from the build already made.
  const npm = spawn('npm', ['start', '--ignore-scripts', '--', '--config', config, '--client-dir', EXAMPLE_CLIENT], {
    cwd: ROOT,
    env: { ...process.env, AUTOTEST_CONFIG: '', AUTOTEST_UPLOAD_TOKEN: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => {
    npm.kill('SIGKILL');
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    npm.on('exit', (code, signal) => {
      resolve({ code, signal });
    });
  });
  const match = await waitForOutput(npm, /at http:\/\/127\.0\.0\.1:(\d+)\/packages\/builtin\//);
  const port = Number(match[1]);
  assert.equal(await refusesConnections(port), false, 'the server listens');
  npm.kill('SIGTERM');
  assert.deepEqual(await exited, { code: 0, signal: null });
  assert.equal(await refusesConnections(port), true, 'nothing holds the port any more');
});

test('autotest start signs the index it publishes with signing_key, as packager upload does, and ssh-keygen -Y verify accepts it', async (t) => {
  const dir = await tempDir(t);
  const key = path.join(dir, 'signing_key');
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'lab', '-f', key]);
  const repo = path.join(dir, 'builtin');
  const config = path.join(dir, 'global_config.ini');
  await writeFile(config, `[PACKAGES]\nupload_location: ${repo}\nsigning_key: ${key}\n[SERVER]\nport: 0\n`);
  const start = spawn(process.execPath, [path.join(ROOT, 'dist', 'src', 'cli', 'main.js'), 'start', '--config', config, '--client-dir', EXAMPLE_CLIENT], {
    cwd: dir,
    env: { ...process.env, AUTOTEST_CONFIG: '', AUTOTEST_UPLOAD_TOKEN: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => {
    start.kill('SIGKILL');
  });
  await waitForOutput(start, /at http:\/\/127\.0\.0\.1:\d+\/packages\/builtin\//);
  start.kill('SIGTERM');
  const publicKey = (await readFile(`${key}.pub`, 'utf8')).trim().split(' ');
  const signers = path.join(dir, 'allowed_signers');
  await writeFile(signers, `lab ${publicKey[0] ?? ''} ${publicKey[1] ?? ''}\n`);
  const verified = await run('sh', [
    '-c',
    'ssh-keygen -Y verify -f "$1" -I lab -n autotest-packages -s "$2" < "$3"',
    'sh',
    signers,
    path.join(repo, 'packages.json.sig'),
    path.join(repo, 'packages.json'),
  ]);
  assert.equal(verified.code, 0, verified.stderr);
});

test('a server started on a port another process holds fails with a hint to stop that one or choose --port', async (t) => {
  const dir = await tempDir(t);
  const holder = net.createServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    holder.close();
  });
  const address = holder.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  const result = await runCli(['serve', '--port', port.toString()], { cwd: dir });
  assert.equal(result.code, 1, result.stderr);
  assert.match(result.stderr, new RegExp(`error: cannot listen on 127\\.0\\.0\\.1:${port.toString()}: the port is in use \\[ERR_LISTEN\\]`));
  assert.match(result.stderr, /hint: .*another server.*--port/);
});

const EXAMPLE_CONTROL = path.join(ROOT, 'example', 'jobs', 'example.control.mjs');

/** A working folder whose embedded-default repository (var/packages/builtin) holds the example tree. */
async function publishedExample(t: TestContext): Promise<string> {
  const dir = await tempDir(t);
  const upload = await runCli(['packager', 'upload', '--all'], { cwd: dir });
  assert.equal(upload.code, 0, upload.stderr);
  return dir;
}

test('client run --json prints one JSON document on stdout and its status lines on stderr', async (t) => {
  const dir = await publishedExample(t);
  const result = await runCli(['client', 'run', EXAMPLE_CONTROL, '--json', '--results', path.join(dir, 'results')], { cwd: dir });
  assert.equal(result.code, 0, result.stderr);
  const report = JSON.parse(result.stdout) as { status: string; tests: unknown[] };
  assert.equal(report.status, 'GOOD');
  assert.match(result.stderr, /^START\t/m);
  assert.match(result.stderr, /^END GOOD\t/m);
});

test('autoserv on localhost keeps the previous run as HOST.1, reads the job report, and leaves no control or config file in the host folder', async (t) => {
  const dir = await publishedExample(t);
  const hostDir = path.join(dir, 'host');
  for (const run of [1, 2]) {
    const result = await runCli(['autoserv', '-m', 'localhost', '--host-dir', hostDir, EXAMPLE_CONTROL], { cwd: dir });
    assert.equal(result.code, 0, `run ${run.toString()}: ${result.stdout}${result.stderr}`);
    assert.match(result.stdout, /^\[localhost\] START\t/m, 'status lines are streamed');
    assert.match(result.stdout, /^localhost: client by light copy .*job GOOD; sleeptest GOOD/m);
  }
  const results = path.join(dir, 'results', 'autoserv');
  assert.deepEqual((await readdir(results)).sort(), ['localhost', 'localhost.1', 'summary.json']);
  for (const run of ['localhost', 'localhost.1']) assert.match(await readFile(path.join(results, run, 'status.log'), 'utf8'), /END GOOD/);
  assert.deepEqual(
    (await readdir(hostDir)).filter((name) => /^(control|client)-.*\.(mjs|ini)$/.test(name)),
    [],
  );
});

test('autoserv with a control file that does not exist fails before it touches any host, and says control files are ES modules', async (t) => {
  const dir = await tempDir(t);
  const hostDir = path.join(dir, 'host');
  const result = await runCli(['autoserv', '-m', 'localhost', '--host-dir', hostDir, path.join(dir, 'control')], { cwd: dir });
  assert.equal(result.code, 2);
  assert.match(result.stderr, /error: control file .*control: no such file \[ERR_CONTROL_FILE\]/);
  assert.match(result.stderr, /hint: .*ES module control file.*Python control files are not run/);
  await assert.rejects(readdir(hostDir), /ENOENT/);
});

test('installing a custom test from a builtin + custom layout warns only about a repository that failed, not one that lacks it', async (t) => {
  const dir = await publishedExample(t);
  const custom = path.join(dir, 'var', 'packages', 'custom');
  const tree = await generateTree(dir, 1, 1000);
  const upload = await runCli(
    ['packager', 'upload', '-t', 't000', '--client-dir', tree, '--config', await writeConfig(dir, { upload_location: custom }, 'custom.ini')],
    { cwd: dir },
  );
  assert.equal(upload.code, 0, upload.stderr);
  const builtin = path.join(dir, 'var', 'packages', 'builtin');
  const install = async (name: string, fetch: string): Promise<CliResult> => {
    const config = await writeConfig(dir, { fetch_location: fetch, fetch_retries: '0' }, name);
    return runCli(['client', 'install', 'test', 't000', '--install-dir', path.join(dir, `install-${name}`), '--config', config], { cwd: dir });
  };
  const [quiet, dead] = await Promise.all([
    install('quiet.ini', `${builtin}, ${custom}`),
    install('dead.ini', `http://127.0.0.1:1/packages/builtin, ${builtin}, ${custom}`),
  ]);
  assert.equal(quiet.code, 0, quiet.stderr);
  assert.equal(quiet.stderr, '');
  assert.match(quiet.stdout, /test t000: fetched \(test-t000\.tar\.bz2 from .*custom/);
  assert.equal(dead.code, 0, dead.stderr);
  assert.match(dead.stderr, /warning: test t000: passed over http:\/\/127\.0\.0\.1:1\/packages\/builtin/);
  assert.doesNotMatch(dead.stderr, /not in its index/);
});

test('packager list and verify cover custom_upload_location besides upload_location, saying which is which', async (t) => {
  const dir = await publishedExample(t);
  const builtin = path.join(dir, 'var', 'packages', 'builtin');
  const custom = path.join(dir, 'var', 'packages', 'custom');
  const tree = await generateTree(dir, 1, 1000);
  const upload = await runCli(['packager', 'upload', '-t', 't000', '--client-dir', tree, '-r', custom, '--config', await writeConfig(dir, {}, 'none.ini')], {
    cwd: dir,
  });
  assert.equal(upload.code, 0, upload.stderr);
  const config = await writeConfig(dir, { upload_location: builtin, custom_upload_location: custom });
  const listed = await runCli(['packager', 'list', '--json', '--config', config], { cwd: dir });
  assert.equal(listed.code, 0, listed.stderr);
  const reports = JSON.parse(listed.stdout) as { role: string; location: string; packages: { file: string }[] }[];
  assert.deepEqual(
    reports.map((r) => [r.role, r.location, r.packages.length]),
    [
      ['upload_location', builtin, 6],
      ['custom_upload_location', custom, 1],
    ],
  );
  const text = await runCli(['packager', 'list', '--config', config], { cwd: dir });
  assert.match(text.stdout, new RegExp(`^${custom} \\(custom_upload_location\\): 1 package$`, 'm'));

  await writeFile(path.join(custom, 'test-t000.tar.bz2'), 'corrupt');
  const verify = await runCli(['packager', 'verify', '--config', config], { cwd: dir });
  assert.equal(verify.code, 1);
  assert.match(verify.stdout, new RegExp(`^${builtin} \\(upload_location\\): 6 indexed, consistent$`, 'm'));
  assert.match(verify.stdout, new RegExp(`^${custom} \\(custom_upload_location\\): 1 indexed, 1 problem\\n  mismatch: test-t000\\.tar\\.bz2`, 'm'));
});

test('autotest --version prints "autotest VERSION"', async (t) => {
  const dir = await tempDir(t);
  const { version } = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
  const result = await runCli(['--version'], { cwd: dir });
  assert.equal(result.code, 0);
  assert.equal(result.stdout, `autotest ${version}\n`);
});

test('packager remove of a package that is in no location exits 1 and says so; upload counts 1 package, not 1 packages', async (t) => {
  const dir = await tempDir(t);
  const tree = await generateTree(dir, 1, 1000);
  const upload = await runCli(['packager', 'upload', '-t', 't000', '--client-dir', tree], { cwd: dir });
  assert.equal(upload.code, 0, upload.stderr);
  assert.match(upload.stdout, /^1 package, 1 to pack, 1 location$/m);
  const result = await runCli(['packager', 'remove', '-t', 't000,nosuchtest'], { cwd: dir });
  assert.equal(result.code, 1, result.stderr);
  assert.match(result.stdout, /removed 1, not there 1/);
  assert.match(result.stderr, /^failed: test-nosuchtest\.tar\.bz2: in none of the 1 location \(nothing removed\)$/m);
  assert.doesNotMatch(result.stderr, /test-t000/);
});

test("the systemd unit etc/autotest-serve.service passes systemd-analyze verify and its ExecStart runs the built CLI's serve", async () => {
  const unit = path.join(ROOT, 'etc', 'autotest-serve.service');
  const result = await run('systemd-analyze', ['verify', unit]);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stderr, '');
  assert.match(await readFile(unit, 'utf8'), /^ExecStart=\S*node \S+\/dist\/src\/cli\/main\.js serve$/m);
});

test("a download's status line says which package, from which repository, how far and how fast", () => {
  const MiB = 1024 * 1024;
  assert.equal(
    describeDownload({ file: 'test-big.tar.bz2', repository: 'http://lab/packages/builtin', bytes: 3 * MiB, size: 12 * MiB }, 2),
    'test-big.tar.bz2 from http://lab/packages/builtin: 3.0 MiB of 12.0 MiB (25%), 1.5 MiB/s',
  );
  assert.equal(describeDownload({ file: 'kernel.img', repository: '/srv/packages', bytes: 512, size: undefined }, 0), 'kernel.img from /srv/packages: 512 B');
});

test('the packages page shows each repository with its totals and publication dates to the second', async (t) => {
  const dir = await publishedExample(t);
  const config = await loadConfig({
    file: await writeConfig(dir, {
      upload_location: path.join(dir, 'var', 'packages', 'builtin'),
      custom_upload_location: path.join(dir, 'var', 'packages', 'custom'),
    }),
    env: {},
  });
  const app = await buildServer({ config, logLevel: 'silent', cacheDir: path.join(dir, 'server-cache') });
  t.after(() => app.close());
  const page = (await app.inject({ url: '/' })).body;
  assert.match(page, /<h2 id="repo-builtin">[^\n]*\n<p class="totals">6 packages, \d+\.\d KiB<\/p>/);
  assert.match(page, /<h2 id="repo-custom">[^\n]*\n<p class="totals">0 packages, 0 B<\/p>/);
  const dates = [...page.matchAll(/<time datetime="([^"]+)" title="[^"]+">([^<]+)<\/time>/g)];
  assert.equal(dates.length, 6);
  for (const [, instant, shown] of dates) {
    assert.equal(shown, `${(instant ?? '').slice(0, 10)} ${(instant ?? '').slice(11, 19)} UTC`, 'to the second, no milliseconds');
  }
});
