import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { access, chmod, mkdir, readFile, readdir, stat, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { makeGitRepository, startGitDaemon } from './fixtures/git.js';
import { createNamespaceHost } from './fixtures/netns.js';
import { startNginx } from './fixtures/nginx.js';
import { run } from './fixtures/process.js';
import { startSshd, type SshServer } from './fixtures/sshd.js';
import { CLI, checkConsistency, copyExampleTree, generateTree, md5sumCheck, mountTmpfs, runCli, tempDir, writeConfig, type CliResult } from './helpers.js';

/** A test sshd on loopback; the CLI reaches it through AUTOTEST_SSH_CONFIG. */
async function sshServer(t: TestContext, options: { netns?: string; startup?: string } = {}): Promise<SshServer> {
  const server = await startSshd(options);
  t.after(() => server.stop());
  return server;
}

function cli(args: string[], cwd: string, server: { configFile: string }): Promise<CliResult> {
  return runCli(args, { cwd, env: { AUTOTEST_SSH_CONFIG: server.configFile } });
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  );
}

test('uploads to a local folder and an SSH location at once; on the host files are 0644, md5sum -c passes, and list, verify, repair and remove work over SSH', async (t) => {
  const server = await sshServer(t);
  const dir = await tempDir(t);
  const clientDir = await copyExampleTree(dir);
  const remoteDir = path.join(dir, 'remote', 'packages');
  const config = await writeConfig(dir, {
    upload_location: `${path.join(dir, 'local')}, ssh://${server.alias}${remoteDir}`,
    client_dir: clientDir,
    minimum_free_space: '0',
  });
  const upload = await cli(['packager', 'upload', '--all', '--config', config], dir, server);
  assert.equal(upload.code, 0, upload.stderr);
  assert.match(upload.stdout, new RegExp(`ssh://${server.alias}.*\\(created\\): published 6`));
  assert.match(await md5sumCheck(remoteDir), /test-dbench\.tar\.bz2: OK/);
  assert.deepEqual((await checkConsistency(remoteDir)).problems, []);
  assert.equal(await readFile(path.join(remoteDir, 'packages.checksum'), 'utf8'), await readFile(path.join(dir, 'local', 'packages.checksum'), 'utf8'));
  for (const name of await readdir(remoteDir)) {
    if (name.startsWith('.')) continue;
    assert.equal((await stat(path.join(remoteDir, name))).mode & 0o777, 0o644, name);
  }
  assert.deepEqual(
    (await readdir(remoteDir)).filter((n) => n.startsWith('.tmp.')),
    [],
    'no temp file left on the host',
  );

  const list = await cli(['packager', 'list', '--config', config, '--json'], dir, server);
  assert.equal(list.code, 0, list.stderr);
  const listed = JSON.parse(list.stdout) as { location: string; packages: { file: string }[] }[];
  assert.equal(listed[1]?.packages.length, 6);

  await writeFile(path.join(remoteDir, 'test-hello.tar.bz2'), 'corrupt');
  const verify = await cli(['packager', 'verify', '--config', config], dir, server);
  assert.equal(verify.code, 1);
  assert.match(verify.stdout, /test-hello\.tar\.bz2/);
  const repair = await cli(['packager', 'verify', '--repair', '--config', config], dir, server);
  assert.equal(repair.code, 0, repair.stdout + repair.stderr);
  assert.deepEqual((await checkConsistency(remoteDir)).problems, []);
  assert.match(await md5sumCheck(remoteDir), /test-hello\.tar\.bz2: OK/);

  const remove = await cli(['packager', 'remove', '-t', 'hello', '--config', config], dir, server);
  assert.equal(remove.code, 0, remove.stderr);
  assert.equal(await exists(path.join(remoteDir, 'test-hello.tar.bz2')), false);
  assert.doesNotMatch(await readFile(path.join(remoteDir, 'packages.checksum'), 'utf8'), /test-hello/);
});

test('an SSH location that refuses (not a folder, or an unreachable host) is reported with its reason while the local location gets everything', async (t) => {
  const server = await sshServer(t);
  const dir = await tempDir(t);
  await writeFile(path.join(dir, 'a-file'), 'not a folder');
  const config = await writeConfig(dir, {
    upload_location: `${path.join(dir, 'local')}, ssh://${server.alias}${path.join(dir, 'a-file')}, ssh://127.0.0.1:1${dir}/x`,
    client_dir: await copyExampleTree(dir),
    minimum_free_space: '0',
  });
  const upload = await cli(['packager', 'upload', '--all', '--config', config], dir, server);
  assert.equal(upload.code, 1);
  assert.match(upload.stderr, /a-file: exists but is not a folder/);
  assert.match(upload.stderr, /ssh 127\.0\.0\.1:1: cannot connect/);
  assert.deepEqual((await checkConsistency(path.join(dir, 'local'))).problems, []);
  assert.match(await md5sumCheck(path.join(dir, 'local')), /client-autotest\.tar\.bz2: OK/);
});

test('an SSH location short of minimum_free_space is refused before anything is sent', async (t) => {
  const server = await sshServer(t);
  const dir = await tempDir(t);
  const remoteDir = path.join(dir, 'remote');
  const config = await writeConfig(dir, {
    upload_location: `ssh://${server.alias}${remoteDir}`,
    client_dir: await copyExampleTree(dir),
    minimum_free_space: '9000000',
  });
  const upload = await cli(['packager', 'upload', '--all', '--config', config], dir, server);
  assert.equal(upload.code, 1);
  assert.match(upload.stderr, /GB free, 9000000\.000 GB needed/);
  assert.deepEqual(await readdir(remoteDir), [], 'nothing was sent');
});

test('shell metacharacters, spaces and quotes in remote paths are passed literally, and hosts that could inject a command are refused', async (t) => {
  const server = await sshServer(t);
  const dir = await tempDir(t);
  const marker = path.join(dir, 'INJECTED');
  const weird = path.join(dir, `a dir; touch ${marker}`, `$(touch ${marker})`, 'it\'s `touch x` & "q"');
  const encoded = weird.split('/').map(encodeURIComponent).join('/');
  const config = await writeConfig(dir, {
    // ConfigParser interpolation: a literal "%" is written "%%".
    upload_location: `ssh://${server.alias}${encoded.replaceAll('%', '%%')}`,
    client_dir: await copyExampleTree(dir),
    minimum_free_space: '0',
  });
  const upload = await cli(['packager', 'upload', '-t', 'hello', '--config', config], dir, server);
  assert.equal(upload.code, 0, upload.stderr);
  assert.match(await md5sumCheck(weird), /test-hello\.tar\.bz2: OK/);
  for (const host of [`ssh://host;touch ${marker}/x`, `ssh://-oProxyCommand=touch%20${marker}/x`, 'ssh://$(touch x)/p', 'ssh://a`b`/p']) {
    const refused = await cli(['packager', 'upload', '-t', 'hello', '-r', host, '--config', config], dir, server);
    assert.equal(refused.code, 2, `${host}: ${refused.stdout}${refused.stderr}`);
    assert.match(refused.stderr, /location .*(not a valid|host)/, host);
  }
  assert.equal(await exists(marker), false, 'no injected command ever ran');
  assert.equal(await exists(path.join(dir, 'x')), false);
});

test('20 concurrent single-package uploads to one SSH repository leave 20 index entries, each with its complete file', async (t) => {
  const server = await sshServer(t);
  const dir = await tempDir(t);
  const clientDir = await generateTree(dir, 20, 2048);
  const remoteDir = path.join(dir, 'remote');
  const config = await writeConfig(dir, { upload_location: `ssh://${server.alias}${remoteDir}`, client_dir: clientDir, minimum_free_space: '0' });
  const results = await Promise.all(
    Array.from({ length: 20 }, (_, i) =>
      runCli(['packager', 'upload', '-t', `t${String(i).padStart(3, '0')}`, '--config', config], {
        cwd: dir,
        env: { AUTOTEST_SSH_CONFIG: server.configFile, AUTOTEST_CACHE_DIR: path.join(dir, `.cache-${i.toString()}`) },
      }),
    ),
  );
  for (const result of results) assert.equal(result.code, 0, result.stderr);
  const consistency = await checkConsistency(remoteDir);
  assert.equal(consistency.entries, 20);
  assert.deepEqual(consistency.problems, []);
});

test('an upload to an SSH repository killed at random moments leaves the remote index consistent with its files, and the next run completes', async (t) => {
  const server = await sshServer(t);
  const dir = await tempDir(t);
  const clientDir = await generateTree(dir, 12, 64 * 1024);
  const remoteDir = path.join(dir, 'remote');
  const config = await writeConfig(dir, { upload_location: `ssh://${server.alias}${remoteDir}`, client_dir: clientDir, minimum_free_space: '0' });
  for (let trial = 0; trial < 4; trial += 1) {
    // A changed file each time, so every trial has something to publish.
    await writeFile(path.join(clientDir, 'tests', `t00${(trial % 10).toString()}`, 'notes.txt'), `trial ${trial.toString()}\n`);
    const child = spawn(process.execPath, [CLI, 'packager', 'upload', '--all', '--config', config], {
      cwd: dir,
      env: { ...process.env, AUTOTEST_SSH_CONFIG: server.configFile, AUTOTEST_CACHE_DIR: path.join(dir, '.cache'), AUTOTEST_CONFIG: '' },
      stdio: 'ignore',
    });
    const closed = new Promise<void>((resolve) =>
      child.on('close', () => {
        resolve();
      }),
    );
    setTimeout(() => child.kill('SIGKILL'), 300 + Math.floor(Math.random() * 1200));
    await closed;
    if (await exists(remoteDir)) assert.deepEqual((await checkConsistency(remoteDir)).problems, [], `trial ${trial.toString()}`);
  }
  const last = await cli(['packager', 'upload', '--all', '--config', config], dir, server);
  assert.equal(last.code, 0, last.stderr);
  const consistency = await checkConsistency(remoteDir);
  assert.equal(consistency.entries, 13);
  assert.deepEqual(consistency.problems, []);
});

test('upkeep removes exactly the files older than custom_max_age, by modification time, locally and over SSH', async (t) => {
  const server = await sshServer(t);
  const dir = await tempDir(t);
  const localDir = path.join(dir, 'custom-local');
  const remoteDir = path.join(dir, 'custom-remote');
  const files = ['kernel-old.img', 'kernel-new.img', 'kernel-edge.img'];
  for (const file of files) await writeFile(path.join(dir, file), `${file}\n`);
  const config = await writeConfig(dir, {
    upload_location: `${localDir}, ssh://${server.alias}${remoteDir}`,
    custom_upload_location: `${localDir}, ssh://${server.alias}${remoteDir}`,
    custom_max_age: '40',
    minimum_free_space: '0',
    client_dir: await copyExampleTree(dir),
  });
  const upload = await cli(['packager', 'upload', ...files.flatMap((f) => ['-f', path.join(dir, f)]), '--config', config], dir, server);
  assert.equal(upload.code, 0, upload.stderr);
  const day = 24 * 3600;
  const now = Date.now() / 1000;
  for (const folder of [localDir, remoteDir]) {
    // Old by modification time but read just now: upkeep must go by mtime, not atime.
    await utimes(path.join(folder, 'kernel-old.img'), now, now - 41 * day);
    await utimes(path.join(folder, 'kernel-edge.img'), now - 50 * day, now - 39 * day);
  }
  const upkeep = await cli(['packager', 'upkeep', '--config', config, '--json'], dir, server);
  assert.equal(upkeep.code, 0, upkeep.stderr);
  const reports = JSON.parse(upkeep.stdout) as { location: string; removed: string[] }[];
  assert.deepEqual(
    reports.map((r) => r.removed),
    [['kernel-old.img'], ['kernel-old.img']],
  );
  for (const folder of [localDir, remoteDir]) {
    assert.equal(await exists(path.join(folder, 'kernel-old.img')), false);
    assert.equal(await exists(path.join(folder, 'kernel-edge.img')), true);
    const consistency = await checkConsistency(folder);
    assert.equal(consistency.entries, 2);
    assert.deepEqual(consistency.problems, []);
  }
});

test("the seed's second example works as written: upload to a local path and an SSH host at once, then fetch over HTTP from nginx on that host, in the listed order", async (t) => {
  const host = await createNamespaceHost(1);
  t.after(() => host.destroy());
  const server = await sshServer(t, { netns: host.name });
  const dir = await tempDir(t);
  // The host's repository folder; nginx on the host serves it at /packages, as Apache does in the seed.
  const served = path.join(dir, 'host-www');
  const repoDir = path.join(served, 'packages');
  await mkdir(repoDir, { recursive: true });
  const nginx = await startNginx({ root: served, netns: host.name });
  t.after(() => nginx.stop());
  const localRepo = path.join(dir, 'local-repo');
  const config = await writeConfig(dir, {
    upload_location: `${localRepo}, ssh://${server.alias}${repoDir}`,
    fetch_location: `${nginx.url}/packages, ${localRepo}`,
    client_dir: await copyExampleTree(dir),
    minimum_free_space: '0',
  });
  const upload = await cli(['packager', 'upload', '--all', '--config', config], dir, server);
  assert.equal(upload.code, 0, upload.stderr);
  const install = await cli(
    ['client', 'install', 'test', 'sleeptest', 'dbench', '--config', config, '--install-dir', path.join(dir, 'client'), '--json'],
    dir,
    server,
  );
  assert.equal(install.code, 0, install.stderr);
  const records = JSON.parse(install.stdout) as { name: string; repository: string; action: string }[];
  for (const record of records) {
    assert.equal(record.action, 'fetched');
    assert.equal(record.repository, `${nginx.url}/packages`, 'the first listed repository served it');
  }
  assert.ok(nginx.url.includes(host.address), 'nginx answered from the namespace host');
  assert.match(await readFile(nginx.accessLog, 'utf8'), /GET \/packages\/test-sleeptest\.tar\.bz2 HTTP\/1\.1" 200/);
  assert.equal(await exists(path.join(dir, 'client', 'tests', 'dbench', 'dbench.mjs')), true);
});

test('installs from an SSH fetch location and from a git repository with a branch, verified against their indexes', async (t) => {
  const server = await sshServer(t);
  const dir = await tempDir(t);
  const repoDir = path.join(dir, 'repo');
  const config = await writeConfig(dir, { upload_location: repoDir, client_dir: await copyExampleTree(dir), minimum_free_space: '0' });
  assert.equal((await cli(['packager', 'upload', '--all', '--config', config], dir, server)).code, 0);

  const viaSsh = await cli(
    ['client', 'install', 'dep', 'libaio', '-r', `ssh://${server.alias}${repoDir}`, '--config', config, '--install-dir', path.join(dir, 'c1'), '--json'],
    dir,
    server,
  );
  assert.equal(viaSsh.code, 0, viaSsh.stderr);
  assert.equal((JSON.parse(viaSsh.stdout) as { repository: string }[])[0]?.repository, `ssh://${server.alias}${repoDir}`);
  // An Autotest repository has packages.checksum alone; a package it lacks is an error, never an empty file.
  const autotestRepo = path.join(dir, 'autotest-repo');
  await mkdir(autotestRepo);
  for (const name of ['packages.checksum', 'dep-libaio.tar.bz2']) await writeFile(path.join(autotestRepo, name), await readFile(path.join(repoDir, name)));
  const legacy = await cli(
    ['client', 'install', 'dep', 'libaio', '-r', `ssh://${server.alias}${autotestRepo}`, '--config', config, '--install-dir', path.join(dir, 'c3'), '--json'],
    dir,
    server,
  );
  assert.equal(legacy.code, 0, legacy.stderr);
  await writeFile(path.join(autotestRepo, 'packages.checksum'), await readFile(path.join(repoDir, 'packages.checksum'), 'utf8'));
  const missing = await cli(
    ['client', 'install', 'test', 'hello', '-r', `ssh://${server.alias}${autotestRepo}`, '--config', config, '--install-dir', path.join(dir, 'c4')],
    dir,
    server,
  );
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /test-hello\.tar\.bz2: not found/);

  const gitBase = path.join(dir, 'git');
  const files: Record<string, Buffer> = {};
  for (const name of await readdir(repoDir)) if (!name.startsWith('.')) files[name] = await readFile(path.join(repoDir, name));
  await makeGitRepository(path.join(gitBase, 'packages.git'), files, 'stable');
  const daemon = await startGitDaemon(gitBase);
  t.after(() => daemon.stop());
  const viaGit = await cli(
    [
      'client',
      'install',
      'profiler',
      'vmstat',
      '-r',
      `${daemon.url('packages.git')}:stable`,
      '--config',
      config,
      '--install-dir',
      path.join(dir, 'c2'),
      '--json',
    ],
    dir,
    server,
  );
  assert.equal(viaGit.code, 0, viaGit.stderr);
  assert.equal((JSON.parse(viaGit.stdout) as { repository: string; action: string }[])[0]?.action, 'fetched');
  assert.equal(await exists(path.join(dir, 'c2', 'profilers', 'vmstat')), true);

  // An Autotest-style git repository (packages.checksum alone) is read by one archive of its
  // index files; a package the index names but git cannot give is an error, never an empty file.
  const legacyFiles: Record<string, Buffer> = {
    'packages.checksum': await readFile(path.join(repoDir, 'packages.checksum')),
    'dep-libaio.tar.bz2': await readFile(path.join(repoDir, 'dep-libaio.tar.bz2')),
  };
  await makeGitRepository(path.join(gitBase, 'legacy.git'), legacyFiles, 'main');
  const legacyGit = await cli(
    ['client', 'install', 'dep', 'libaio', '-r', `${daemon.url('legacy.git')}:main`, '--config', config, '--install-dir', path.join(dir, 'c5'), '--json'],
    dir,
    server,
  );
  assert.equal(legacyGit.code, 0, legacyGit.stderr);
  const missingGit = await cli(
    ['client', 'install', 'test', 'hello', '-r', `${daemon.url('legacy.git')}:main`, '--config', config, '--install-dir', path.join(dir, 'c6')],
    dir,
    server,
  );
  assert.equal(missingGit.code, 1);
  assert.match(missingGit.stderr, /legacy\.git.*test-hello\.tar\.bz2/);
  assert.equal(await exists(path.join(dir, 'c6', 'tests', 'hello')), false);
});

test('an SSH upload location whose disk fills up during the copy reports the full disk, publishes nothing, leaves no temp file and loses nothing stored', async (t) => {
  const server = await sshServer(t);
  const dir = await tempDir(t);
  const client = await generateTree(dir, 5, 2_000_000);
  const mnt = await mountTmpfs(t, dir, '3m');
  await writeFile(path.join(mnt, 'keep-me'), 'stored before');
  const config = await writeConfig(dir, { upload_location: `ssh://${server.alias}${mnt}`, client_dir: client, minimum_free_space: '0' });
  const upload = await cli(['packager', 'upload', '--all', '--config', config], dir, server);
  assert.equal(upload.code, 1);
  assert.match(upload.stderr, /disk full while copying/);
  assert.equal(await readFile(path.join(mnt, 'keep-me'), 'utf8'), 'stored before');
  assert.deepEqual(
    (await readdir(mnt)).filter((f) => f.startsWith('.tmp')),
    [],
  );
  assert.deepEqual((await checkConsistency(mnt)).problems, []);
});

test("text printed by an SSH account's start-up files is never taken for data: upload, list, verify and install over SSH stay intact, and a start-up file that exits is named as the cause", async (t) => {
  // What lab accounts do: a banner on stdout, a notice on stderr, for every command.
  const chatty = await sshServer(t, {
    startup: 'echo "Welcome to lab host 7 (managed by Puppet)"\nprintf "no newline at the end"\necho "pyenv: rehash skipped" >&2\n',
  });
  const dir = await tempDir(t);
  const remoteDir = path.join(dir, 'remote');
  const config = await writeConfig(dir, {
    upload_location: `ssh://${chatty.alias}${remoteDir}`,
    client_dir: await copyExampleTree(dir),
    minimum_free_space: '0',
  });
  const upload = await cli(['packager', 'upload', '--all', '--config', config], dir, chatty);
  assert.equal(upload.code, 0, upload.stderr);
  assert.match(await md5sumCheck(remoteDir), /test-dbench\.tar\.bz2: OK/);
  assert.deepEqual((await checkConsistency(remoteDir)).problems, []);
  assert.doesNotMatch(await readFile(path.join(remoteDir, 'packages.checksum'), 'utf8'), /Welcome/);
  const verify = await cli(['packager', 'verify', '--config', config], dir, chatty);
  assert.equal(verify.code, 0, verify.stdout + verify.stderr);
  const list = await cli(['packager', 'list', '--config', config, '--json'], dir, chatty);
  assert.equal(list.code, 0, list.stderr);
  assert.equal((JSON.parse(list.stdout) as { packages: unknown[] }[])[0]?.packages.length, 6);
  const install = await cli(
    ['client', 'install', 'test', 'dbench', '-r', `ssh://${chatty.alias}${remoteDir}`, '--config', config, '--install-dir', path.join(dir, 'c1'), '--json'],
    dir,
    chatty,
  );
  assert.equal(install.code, 0, install.stderr);
  assert.equal((JSON.parse(install.stdout) as { action: string }[])[0]?.action, 'fetched');

  const broken = await sshServer(t, { startup: 'echo "This account is disabled."\nexit 1\n' });
  const brokenConfig = await writeConfig(
    dir,
    { upload_location: `ssh://${broken.alias}${path.join(dir, 'other')}`, client_dir: path.join(dir, 'client'), minimum_free_space: '0' },
    'broken.ini',
  );
  const refused = await cli(['packager', 'upload', '-t', 'hello', '--config', brokenConfig], dir, broken);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /never started .*start-up files printed "This account is disabled\."/);
  assert.match(refused.stderr, /start-up file \(~\/\.bashrc, ~\/\.profile\)/);
});

/** What `ssh -O check` says of the master behind `socket`: its pid, or undefined when none runs. */
async function masterPid(server: SshServer, socket: string): Promise<number | undefined> {
  const check = await run('ssh', ['-F', server.configFile, '-o', `ControlPath=${socket}`, '-O', 'check', server.alias]);
  const pid = /Master running \(pid=(\d+)\)/.exec(check.stderr)?.[1];
  return check.code === 0 && pid !== undefined ? Number(pid) : undefined;
}

test('a run leaves its SSH master connection in a private per-user folder for the next run to reuse, and it dies with its server; AUTOTEST_SSH_CONTROL_PERSIST=0 leaves none, and a folder others can reach is refused', async (t) => {
  const server = await sshServer(t);
  const dir = await tempDir(t, 'at-');
  const remoteDir = path.join(dir, 'remote');
  const config = await writeConfig(dir, {
    upload_location: `ssh://${server.alias}${remoteDir}`,
    client_dir: await copyExampleTree(dir),
    minimum_free_space: '0',
  });
  // XDG_RUNTIME_DIR of the test's own, so no other test's masters are in the folder.
  const withRuntime = (runtime: string, env: NodeJS.ProcessEnv = {}): Promise<CliResult> =>
    runCli(['packager', 'list', '--config', config], { cwd: dir, env: { AUTOTEST_SSH_CONFIG: server.configFile, XDG_RUNTIME_DIR: runtime, ...env } });
  assert.equal((await cli(['packager', 'upload', '--all', '--config', config], dir, server)).code, 0);

  const runtime = path.join(dir, 'run');
  await mkdir(runtime, { mode: 0o700 });
  const first = await withRuntime(runtime);
  assert.equal(first.code, 0, first.stderr);
  const sockets = path.join(runtime, 'autotest-ssh');
  assert.equal((await stat(sockets)).mode & 0o777, 0o700);
  const names = await readdir(sockets);
  assert.equal(names.length, 1, 'one master for the one host');
  assert.match(names[0] ?? '', /^[0-9a-f]{40}$/, 'named by %C');
  const socket = path.join(sockets, names[0] ?? '');
  const pid = await masterPid(server, socket);
  assert.ok(pid !== undefined, 'the master outlived the run');
  assert.equal((await withRuntime(runtime)).code, 0);
  assert.equal(await masterPid(server, socket), pid, 'the second run went through the same master');

  const once = path.join(dir, 'run-once');
  await mkdir(once, { mode: 0o700 });
  assert.equal((await withRuntime(once, { AUTOTEST_SSH_CONTROL_PERSIST: '0' })).code, 0);
  assert.equal(await exists(path.join(once, 'autotest-ssh')), false, 'a per-run folder instead, removed with its master');

  const open = path.join(dir, 'run-open');
  await mkdir(path.join(open, 'autotest-ssh'), { recursive: true });
  await chmod(path.join(open, 'autotest-ssh'), 0o755);
  const refused = await withRuntime(open);
  assert.notEqual(refused.code, 0);
  assert.match(refused.stderr, /refusing to keep SSH master connections in .*run-open\/autotest-ssh: .* has mode 0755: others can reach its sockets/);
  const badValue = await withRuntime(runtime, { AUTOTEST_SSH_CONTROL_PERSIST: '5m' });
  assert.notEqual(badValue.code, 0);
  assert.match(badValue.stderr, /AUTOTEST_SSH_CONTROL_PERSIST must be a number of seconds, not "5m"/);

  await server.stop();
  for (let i = 0; i < 50 && (await exists(socket)); i += 1) await new Promise((resolve) => setTimeout(resolve, 100));
  assert.equal(await exists(socket), false, 'the master went with its server, socket and all');
});
