import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { appendFile, chmod, chown, mkdir, readFile, readdir, rm, stat, symlink, utimes, writeFile, cp } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { hostname, uptime } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { OperationReport } from '../src/packager/index.js';
import { createLocalTarget, fetchFromLocal } from '../src/repositories/index.js';
import { isAutotestError } from '../src/errors.js';
import { hostTag } from '../src/fs/atomic.js';
import { tarTurns } from '../src/packager/tar-turns.js';
import { CLI, checkConsistency, copyExampleTree, execFileAsync, md5sumCheck, runCli, tempDir, writeConfig } from './helpers.js';

const EXAMPLE_FILES = [
  'client-autotest.tar.bz2',
  'dep-libaio.tar.bz2',
  'profiler-vmstat.tar.bz2',
  'test-dbench.tar.bz2',
  'test-hello.tar.bz2',
  'test-sleeptest.tar.bz2',
];

async function setup(
  t: Parameters<typeof tempDir>[0],
  locations = ['repo1', 'repo2'],
): Promise<{ dir: string; client: string; config: string; repos: string[] }> {
  const dir = await tempDir(t);
  const client = await copyExampleTree(dir);
  const repos = locations.map((l) => path.join(dir, l));
  const config = await writeConfig(dir, { upload_location: repos.join(', '), client_dir: client, minimum_free_space: '0' });
  return { dir, client, config, repos };
}

async function uploadJson(dir: string, config: string, ...args: string[]): Promise<OperationReport> {
  const result = await runCli(['packager', 'upload', '--config', config, '--json', ...args], { cwd: dir });
  assert.equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout) as OperationReport;
}

test('publishes every package so that GNU tar extracts it, md5sum -c passes and the manifest sha256 matches, in every location', async (t) => {
  const { dir, config, repos } = await setup(t);
  const report = await uploadJson(dir, config, '--all');
  assert.deepEqual([...report.packed].sort(), EXAMPLE_FILES);
  for (const repo of repos) {
    const files = (await readdir(repo)).filter((f) => f.endsWith('.tar.bz2')).sort();
    assert.deepEqual(files, EXAMPLE_FILES);
    assert.match(await md5sumCheck(repo), /test-dbench\.tar\.bz2: OK/);
    const consistency = await checkConsistency(repo);
    assert.deepEqual(consistency, { entries: 6, problems: [] });
    for (const file of files) {
      const out = path.join(dir, 'x', repo, file);
      await mkdir(out, { recursive: true });
      await execFileAsync('tar', ['-xjf', path.join(repo, file), '-C', out]);
      const published = await stat(path.join(repo, file));
      assert.equal(published.mode & 0o777, 0o644);
      assert.equal(published.nlink, 1, `${file} in ${repo} shares its file with no other location or staging copy`);
    }
  }
  const dbench = path.join(dir, 'x', repos[0] ?? '', 'test-dbench.tar.bz2');
  assert.equal((await readdir(path.join(dbench, 'src', 'lib'))).join(), 'loadfile.c', '.pack_exclude leaves out *.o');
  assert.equal((await readdir(dbench)).includes('scratch'), false, '.pack_exclude leaves out scratch/');
  const client = path.join(dir, 'x', repos[0] ?? '', 'client-autotest.tar.bz2');
  assert.deepEqual(await readdir(path.join(client, 'tests')), [], 'the client package leaves tests out');
  assert.deepEqual(await readdir(path.join(client, 'profilers')), ['profilers.conf'], 'but keeps profilers/ top-level files');
});

test('a local location on the staging file system links the packed file, a second one gets a copy of its own, and both publish it whole', async (t) => {
  const dir = await tempDir(t);
  const packed = path.join(dir, 'test-hello.tar.bz2');
  await writeFile(packed, 'the packed bytes');
  const [first, second] = ['repo1', 'repo2'].map((name) => createLocalTarget({ kind: 'local', path: path.join(dir, name), text: name }));
  assert.ok(first && second);
  for (const target of [first, second]) await target.prepare({ minimumFreeBytes: 0, neededBytes: 0 });
  const linked = await first.stage('test-hello.tar.bz2', packed);
  const copied = await second.stage('test-hello.tar.bz2', packed);
  const source = await stat(packed);
  assert.equal((await stat(linked.tempPath)).ino, source.ino, 'the first location links the staging file');
  assert.notEqual((await stat(copied.tempPath)).ino, source.ino, 'the second one, which would share it, copies it');
  await rm(packed);
  const digest = (algorithm: string): string => createHash(algorithm).update('the packed bytes').digest('hex');
  const entry = { file: 'test-hello.tar.bz2', md5: digest('md5'), sha256: digest('sha256'), size: 16 };
  for (const [target, staged] of [
    [first, linked],
    [second, copied],
  ] as const) {
    await target.commit({ add: [{ entry, staged }], refresh: [], remove: [] });
  }
  for (const name of ['repo1', 'repo2']) {
    const published = path.join(dir, name, 'test-hello.tar.bz2');
    assert.equal(await readFile(published, 'utf8'), 'the packed bytes');
    assert.equal((await stat(published)).nlink, 1);
    assert.deepEqual(await checkConsistency(path.join(dir, name)), { entries: 1, problems: [] });
  }
});

test('a package published into a setgid folder takes the folder group, as a copy does, not the staging file group', async (t) => {
  const dir = await tempDir(t);
  const packed = path.join(dir, 'test-hello.tar.bz2');
  await writeFile(packed, 'the packed bytes');
  const repo = path.join(dir, 'shared');
  await mkdir(repo);
  const teamGid = (await stat(packed)).gid + 1;
  await chown(repo, process.getuid?.() ?? 0, teamGid);
  await chmod(repo, 0o2775);
  const target = createLocalTarget({ kind: 'local', path: repo, text: repo });
  await target.prepare({ minimumFreeBytes: 0, neededBytes: 0 });
  const staged = await target.stage('test-hello.tar.bz2', packed);
  await rm(packed);
  const digest = (algorithm: string): string => createHash(algorithm).update('the packed bytes').digest('hex');
  await target.commit({
    add: [{ entry: { file: 'test-hello.tar.bz2', md5: digest('md5'), sha256: digest('sha256'), size: 16 }, staged }],
    refresh: [],
    remove: [],
  });
  const published = await stat(path.join(repo, 'test-hello.tar.bz2'));
  assert.equal(published.gid, teamGid, 'the team that shares the folder owns the package');
  assert.equal(await readFile(path.join(repo, 'test-hello.tar.bz2'), 'utf8'), 'the packed bytes');
});

test('packs the same tree into byte-identical tarballs, whatever the files mtimes', async (t) => {
  const { dir, client, config, repos } = await setup(t, ['repo1']);
  await uploadJson(dir, config, '--all');
  const first = await readFile(path.join(repos[0] ?? '', 'packages.checksum'), 'utf8');
  const copy = path.join(dir, 'client-copy');
  await cp(client, copy, { recursive: true, verbatimSymlinks: true });
  await utimes(path.join(copy, 'tests', 'hello', 'hello.mjs'), new Date('2011-01-01'), new Date('2011-01-01'));
  const config2 = await writeConfig(dir, { upload_location: path.join(dir, 'repo-copy'), client_dir: copy, minimum_free_space: '0' }, 'copy.ini');
  await uploadJson(dir, config2, '--all');
  assert.equal(await readFile(path.join(dir, 'repo-copy', 'packages.checksum'), 'utf8'), first);
});

test('a second upload --all of an unchanged tree packs and copies nothing; changing one file re-publishes exactly that package', async (t) => {
  const { dir, client, config, repos } = await setup(t);
  await uploadJson(dir, config, '--all');
  const before = await stat(path.join(repos[0] ?? '', 'test-hello.tar.bz2'));
  const again = await uploadJson(dir, config, '--all');
  assert.deepEqual(again.packed, []);
  for (const location of again.locations) {
    assert.deepEqual(location.published, []);
    assert.equal(location.unchanged.length, 6);
  }
  assert.equal((await stat(path.join(repos[0] ?? '', 'test-hello.tar.bz2'))).ino, before.ino, 'the file was not rewritten');

  await appendFile(path.join(client, 'tests', 'dbench', 'src', 'README'), 'one more line\n');
  const changed = await uploadJson(dir, config, '--all');
  assert.deepEqual(changed.packed, ['test-dbench.tar.bz2']);
  for (const location of changed.locations) assert.deepEqual(location.published, ['test-dbench.tar.bz2']);
  for (const repo of repos) assert.deepEqual((await checkConsistency(repo)).problems, []);
});

test('uploads chosen packages, plain files and an extra -r location; an empty or missing site_tests is normal', async (t) => {
  const { dir, config } = await setup(t, ['repo1']);
  const kernel = path.join(dir, 'vmlinuz-6.1');
  await writeFile(kernel, 'kernel image bytes');
  const extra = path.join(dir, 'extra');
  const report = await uploadJson(dir, config, '-t', 'hello,sleeptest', '-d', 'libaio', '-p', 'vmstat', '-c', '-f', kernel, '-r', extra);
  assert.deepEqual(
    report.locations.map((l) => l.published.length),
    [6, 6],
  );
  assert.equal(await readFile(path.join(extra, 'vmlinuz-6.1'), 'utf8'), 'kernel image bytes');
  assert.deepEqual((await checkConsistency(extra)).problems, []);

  const { client } = await setup(t, ['repo3']);
  const withoutSiteTests = await uploadJson(path.dirname(client), path.join(path.dirname(client), 'global_config.ini'), '--all');
  assert.equal(withoutSiteTests.packed.length, 6, 'no site_tests/ at all');
  await mkdir(path.join(client, 'site_tests', 'hello'), { recursive: true });
  await writeFile(path.join(client, 'site_tests', 'hello', 'site.mjs'), 'export const site = true;\n');
  await mkdir(path.join(client, 'site_tests', '.svn'));
  const withSiteTest = await uploadJson(path.dirname(client), path.join(path.dirname(client), 'global_config.ini'), '--all');
  // The client package changes too: it now holds an empty site_tests/ folder.
  assert.deepEqual([...withSiteTest.packed].sort(), ['client-autotest.tar.bz2', 'test-hello.tar.bz2'], 'a site test overrides the test of the same name');
  const listed = await execFileAsync('tar', ['-tjf', path.join(path.dirname(client), 'repo3', 'test-hello.tar.bz2')]);
  assert.equal(listed.stdout, 'site.mjs\n');
});

test('an unknown test, a missing client tree, bad names and a bad config each fail with what, where and what to do', async (t) => {
  const { dir, config } = await setup(t, ['repo1']);
  const cases: [string[], RegExp][] = [
    [['upload', '-t', 'nosuchtest'], /test "nosuchtest" not found: no folder .*tests\/nosuchtest/],
    [['upload', '--all', '--client-dir', path.join(dir, 'missing')], /client tree .*missing does not exist/],
    [['upload', '-t', '../etc'], /test name "\.\.\/etc" contains "\.\."/],
    [['upload', '-t', 'a/b'], /test name "a\/b" is not allowed/],
    [['upload', '-t', '.hidden'], /test name "\.hidden" is not allowed/],
    [['upload', '-t', 'x;touch pwned'], /is not allowed/],
    [['upload', '-f', path.join(dir, 'packages.checksum')], /file name "packages\.checksum" is reserved for the repository index/],
    [['remove', '-f', 'packages.json'], /file name "packages\.json" is reserved/],
    [['upload'], /nothing to do/],
    [['frobnicate'], /unknown packager action "frobnicate"/],
  ];
  for (const [args, message] of cases) {
    const result = await runCli(['packager', ...args, '--config', config], { cwd: dir });
    assert.notEqual(result.code, 0, args.join(' '));
    assert.match(result.stderr, message);
    assert.match(result.stderr, /hint: |error: /);
  }
  assert.deepEqual((await readdir(dir)).includes('pwned'), false);
  const bad = await writeConfig(dir, { upload_location: path.join(dir, 'r'), minimum_free_space: 'lots' }, 'bad.ini');
  const result = await runCli(['packager', 'upload', '--all', '--config', bad], { cwd: dir });
  assert.equal(result.code, 2);
  assert.match(result.stderr, /bad\.ini:3: \[PACKAGES\] minimum_free_space = "lots": allowed is a number >= 0/);
  await assert.rejects(stat(path.join(dir, 'r')), 'nothing was created');
});

test('verify finds a missing and a corrupt package, and --repair publishes them again from the tree', async (t) => {
  const { dir, config, repos } = await setup(t, ['repo1']);
  await uploadJson(dir, config, '--all');
  const repo = repos[0] ?? '';
  await rm(path.join(repo, 'test-hello.tar.bz2'));
  await writeFile(path.join(repo, 'dep-libaio.tar.bz2'), 'corrupt');
  await writeFile(path.join(repo, 'stray-file'), 'unindexed');
  const verify = await runCli(['packager', 'verify', '--config', config], { cwd: dir });
  assert.equal(verify.code, 1);
  assert.match(verify.stdout, /missing: test-hello\.tar\.bz2/);
  assert.match(verify.stdout, /mismatch: dep-libaio\.tar\.bz2/);
  assert.match(verify.stdout, /unindexed: stray-file/);
  const repair = await runCli(['packager', 'verify', '--repair', '--config', config], { cwd: dir });
  assert.match(repair.stdout, /repaired/);
  assert.deepEqual(await checkConsistency(repo), { entries: 6, problems: [] });
  assert.equal(await readFile(path.join(repo, 'stray-file'), 'utf8'), 'unindexed', 'repair never deletes what it cannot vouch for');
});

test('remove takes a package out of the index before deleting its file, and list shows what is left', async (t) => {
  const { dir, config, repos } = await setup(t, ['repo1']);
  await uploadJson(dir, config, '--all');
  const removed = await runCli(['packager', 'remove', '-t', 'hello', '--config', config], { cwd: dir });
  assert.equal(removed.code, 0, removed.stderr);
  const listed = await runCli(['packager', 'list', '--config', config], { cwd: dir });
  assert.doesNotMatch(listed.stdout, /test-hello|hello /);
  assert.match(listed.stdout, /sleeptest/);
  assert.deepEqual(await checkConsistency(repos[0] ?? ''), { entries: 5, problems: [] });
});

test('a local fetch_location copy is verified against its index; a corrupt copy is refused and never lands', async (t) => {
  const { dir, config, repos } = await setup(t, ['repo1']);
  await uploadJson(dir, config, '--all');
  const repo = repos[0] ?? '';
  const dest = path.join(dir, 'cache', 'test-hello.tar.bz2');
  const fetched = await fetchFromLocal(repo, 'test-hello.tar.bz2', dest);
  assert.equal(
    createHash('sha256')
      .update(await readFile(dest))
      .digest('hex'),
    fetched.entry.sha256,
  );
  const bytes = await readFile(path.join(repo, 'test-sleeptest.tar.bz2'));
  bytes.writeUInt8(bytes.readUInt8(bytes.length - 5) ^ 0xff, bytes.length - 5);
  await writeFile(path.join(repo, 'test-sleeptest.tar.bz2'), bytes);
  const bad = path.join(dir, 'cache', 'test-sleeptest.tar.bz2');
  await assert.rejects(fetchFromLocal(repo, 'test-sleeptest.tar.bz2', bad), (error: unknown) => isAutotestError(error, 'ERR_CHECKSUM_MISMATCH'));
  assert.deepEqual(await readdir(path.join(dir, 'cache')), ['test-hello.tar.bz2']);
});

test('a package that cannot be packed (a symlink leaving it) is reported by name once, with its hint, while the others are published', async (t) => {
  const { dir, client, config, repos } = await setup(t, ['repo1']);
  await symlink('../../../etc/passwd', path.join(client, 'tests', 'hello', 'passwd'));
  const result = await runCli(['packager', 'upload', '--all', '--config', config], { cwd: dir });
  assert.equal(result.code, 1);
  assert.match(
    result.stderr,
    /failed: test-hello\.tar\.bz2: .*hello\/passwd: symlink to "\.\.\/\.\.\/\.\.\/etc\/passwd" points outside its package\n {2}hint: /,
  );
  assert.equal(result.stderr.split('\n').filter((line) => line.startsWith('failed: test-hello.tar.bz2')).length, 1, result.stderr);
  assert.deepEqual(await checkConsistency(repos[0] ?? ''), { entries: 5, problems: [] });
});

test('verify --repair that cannot republish a package says so and exits non-zero', async (t) => {
  const { dir, client, config, repos } = await setup(t, ['repo1']);
  await uploadJson(dir, config, '--all');
  await writeFile(path.join(repos[0] ?? '', 'test-hello.tar.bz2'), 'corrupt');
  await execFileAsync('mkfifo', [path.join(client, 'tests', 'hello', 'pipe')]);
  const repair = await runCli(['packager', 'verify', '--repair', '--config', config], { cwd: dir });
  assert.equal(repair.code, 1);
  assert.match(repair.stderr, /republishing from the client tree failed: .*hello\/pipe: only files, folders and symlinks can be packed/);
  assert.deepEqual(await checkConsistency(repos[0] ?? ''), { entries: 5, problems: [] });
});

test('a compressor that fails on one package fails that package with the tool, its exit code and its words, and the others are published', async (t) => {
  const { dir, config, repos } = await setup(t, ['repo1']);
  const real = (await execFileAsync('sh', ['-c', 'command -v lbzip2 || command -v bzip2'])).stdout.trim();
  const bin = path.join(dir, 'bin');
  await mkdir(bin);
  // Packages reach the compressor as staged tar files named after them, several to a run.
  await writeFile(
    path.join(bin, 'lbzip2'),
    `#!/bin/sh\ncase "$*" in *test-hello.tar*) echo "no space left in the pretend disk" >&2; exit 3;; esac\nexec '${real}' "$@"\n`,
    { mode: 0o755 },
  );
  const result = await runCli(['packager', 'upload', '--all', '--config', config], { cwd: dir, env: { PATH: `${bin}:${process.env.PATH ?? ''}` } });
  assert.equal(result.code, 1);
  assert.match(result.stderr, /failed: test-hello\.tar\.bz2: lbzip2 failed to compress .*test-hello\.tar \(exit code 3\): no space left in the pretend disk/);
  assert.deepEqual(await checkConsistency(repos[0] ?? ''), { entries: 5, problems: [] });
  const again = await uploadJson(dir, config, '--all');
  assert.deepEqual(again.packed, ['test-hello.tar.bz2']);
});

test("a packager killed in the middle of an upload publishes nothing, and the next upload removes its staging folder but not a live packager's", async (t) => {
  const { dir, config, repos } = await setup(t, ['repo1']);
  // A compressor that does not finish: the packager is killed while its packages are staged.
  const { compressing, cache, env } = await stuckCompressor(dir);
  const child = spawn(process.execPath, [CLI, 'packager', 'upload', '--all', '--config', config], { cwd: dir, env, detached: true, stdio: 'ignore' });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const stagingRoot = path.join(cache, 'staging');
  // Killed once a compressor runs and a tar file is staged: the client package streams into a
  // compressor of its own, which may start before the first tar file is written.
  const tarStaged = async (): Promise<boolean> => {
    for (const folder of await readdir(stagingRoot).catch(() => [])) {
      if ((await readdir(path.join(stagingRoot, folder)).catch(() => [])).some((f) => f.endsWith('.tar'))) return true;
    }
    return false;
  };
  for (let i = 0; i < 200 && !((await stat(compressing).catch(() => undefined)) && (await tarStaged())); i += 1) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  // The packager and its compressors, as the OOM killer or a kill -9 of the job would.
  process.kill(-(child.pid ?? 0), 'SIGKILL');
  await exited;
  const killed = await readdir(stagingRoot);
  assert.equal(killed.length, 1, `the killed packager's staging folder is left: ${killed.join(' ')}`);
  assert.ok(
    (await readdir(path.join(stagingRoot, killed[0] ?? ''))).some((f) => f.endsWith('.tar')),
    'with its tar files in it',
  );
  assert.deepEqual(
    (await readdir(repos[0] ?? '')).filter((f) => f.endsWith('.tar.bz2')),
    [],
    'nothing was published',
  );

  // A live packager's folder on this host (this test's own pid), an old unnamed one and a fresh unnamed one.
  const live = `.tmp.${hostTag()}.${String(process.pid)}.0a1b2c3d.pack`;
  await mkdir(path.join(stagingRoot, live));
  await mkdir(path.join(stagingRoot, 'pack-AbC123'));
  const twoDaysAgo = new Date(Date.now() - 2 * 24 * 3600 * 1000);
  await utimes(path.join(stagingRoot, 'pack-AbC123'), twoDaysAgo, twoDaysAgo);
  await mkdir(path.join(stagingRoot, 'pack-XyZ789'));
  const again = await runCli(['packager', 'upload', '--all', '--config', config], { cwd: dir });
  assert.equal(again.code, 0, again.stderr);
  assert.deepEqual((await readdir(stagingRoot)).sort(), [live, 'pack-XyZ789'].sort());
  assert.deepEqual(await checkConsistency(repos[0] ?? ''), { entries: 6, problems: [] });
});

test('a cache folder whose path holds a newline still packs and publishes every package', async (t) => {
  const { dir, config, repos } = await setup(t, ['repo1']);
  const result = await runCli(['packager', 'upload', '--all', '--config', config], { cwd: dir, env: { AUTOTEST_CACHE_DIR: path.join(dir, 'ca\nche') } });
  assert.equal(result.code, 0, result.stderr);
  assert.deepEqual(await checkConsistency(repos[0] ?? ''), { entries: 6, problems: [] });
});

test('a plain file named like a package tar file (-f test-hello.tar) is published beside that package, both whole', async (t) => {
  const { dir, config, repos } = await setup(t, ['repo1']);
  const plain = path.join(dir, 'test-hello.tar');
  await writeFile(plain, 'x'.repeat(3_000_000));
  const result = await runCli(['packager', 'upload', '--all', '-f', plain, '--config', config], { cwd: dir });
  assert.equal(result.code, 0, result.stderr);
  assert.deepEqual(await readFile(path.join(repos[0] ?? '', 'test-hello.tar')), await readFile(plain));
  assert.deepEqual(await checkConsistency(repos[0] ?? ''), { entries: 7, problems: [] });
});

test('with compression zstd a package gets the same bytes packed alone as packed with all the others', async (t) => {
  const { dir, client, repos } = await setup(t, ['alone', 'all']);
  const [alone, all] = repos;
  const configFor = (repo: string | undefined): Promise<string> =>
    writeConfig(dir, { upload_location: repo ?? '', client_dir: client, minimum_free_space: '0', compression: 'zstd' }, `${path.basename(repo ?? '')}.ini`);
  const first = await runCli(['packager', 'upload', '-t', 'hello', '--config', await configFor(alone)], { cwd: dir });
  assert.equal(first.code, 0, first.stderr);
  const second = await runCli(['packager', 'upload', '--all', '--config', await configFor(all)], {
    cwd: dir,
    env: { AUTOTEST_CACHE_DIR: path.join(dir, 'other-cache') },
  });
  assert.equal(second.code, 0, second.stderr);
  assert.deepEqual(await readFile(path.join(all ?? '', 'test-hello.tar.zst')), await readFile(path.join(alone ?? '', 'test-hello.tar.zst')));
});

test("a staging folder this host's packager left before the machine rebooted is removed by the next upload, even when its pid now belongs to another process", async (t) => {
  const { dir, config } = await setup(t, ['repo1']);
  const cache = path.join(dir, '.cache');
  const stagingRoot = path.join(cache, 'staging');
  await mkdir(stagingRoot, { recursive: true });
  // Named with the host name alone, as before runtime ids; pid 1 is alive on every machine:
  // after a reboot, the dead packager's pid is as likely taken.
  const beforeBoot = `.tmp.${hostname().replace(/[^A-Za-z0-9-]/g, '_')}.1.0a1b2c3d.pack`;
  await mkdir(path.join(stagingRoot, beforeBoot));
  await writeFile(path.join(stagingRoot, beforeBoot, 'test-hello.tar'), 'staged before the reboot');
  const lastBoot = new Date(Date.now() - uptime() * 1000 - 3600 * 1000);
  await utimes(path.join(stagingRoot, beforeBoot), lastBoot, lastBoot);
  const upload = await runCli(['packager', 'upload', '--all', '--config', config], { cwd: dir });
  assert.equal(upload.code, 0, upload.stderr);
  assert.deepEqual(await readdir(stagingRoot), []);
});

test("a dead packager's staging folder that cannot be removed (immutable here, another user's in a shared cache) does not stop the removal of the others", async (t) => {
  const { dir, config, repos } = await setup(t, ['repo1']);
  const stagingRoot = path.join(dir, '.cache', 'staging');
  await mkdir(stagingRoot, { recursive: true });
  const finished = spawn('true');
  await new Promise((resolve) => finished.once('exit', resolve));
  const host = hostTag();
  const dead = (i: number): string => `.tmp.${host}.${String(finished.pid)}.${i.toString(16).padStart(8, '0')}.pack`;
  // Five that cannot be removed, made first and named to be listed first, then twenty that can.
  const stuck = [0, 1, 2, 3, 4].map((i) => path.join(stagingRoot, dead(i), 'x.tar'));
  for (const file of stuck) {
    await mkdirReturning(path.dirname(file));
    await writeFile(file, 'x');
    await execFileAsync('chattr', ['+i', file]);
  }
  for (let i = 100; i < 120; i += 1) await writeFile(path.join(await mkdirReturning(path.join(stagingRoot, dead(i))), 'x.tar'), 'x');
  try {
    const result = await runCli(['packager', 'upload', '--all', '--config', config], { cwd: dir });
    assert.equal(result.code, 0, result.stderr);
    assert.deepEqual((await readdir(stagingRoot)).sort(), stuck.map((file) => path.basename(path.dirname(file))).sort());
    assert.deepEqual(await checkConsistency(repos[0] ?? ''), { entries: 6, problems: [] });
  } finally {
    // Before the test's folder is removed.
    for (const file of stuck) await execFileAsync('chattr', ['-i', file]);
  }
});

async function mkdirReturning(folder: string): Promise<string> {
  await mkdir(folder);
  return folder;
}

test('a packager in another PID namespace of the same host (a container sharing the cache) keeps its staging folder while another packager cleans up', async (t) => {
  const { dir, config, repos } = await setup(t, ['repo1']);
  const { compressing, cache, env } = await stuckCompressor(dir);
  // Pids count from 1 in a new namespace: 3,000 processes first give the packager one that
  // names no live process out here, as a container's packager's pid would.
  const inside = ['--pid', '--fork', '--kill-child', 'sh', '-c', 'i=0; while [ $i -lt 3000 ]; do /bin/true; i=$((i + 1)); done; exec "$@"', 'sh'];
  const contained = spawn('unshare', [...inside, process.execPath, CLI, 'packager', 'upload', '--all', '--config', config], {
    cwd: dir,
    env,
    detached: true,
    stdio: 'ignore',
  });
  const exited = new Promise((resolve) => contained.once('exit', resolve));
  t.after(async () => {
    process.kill(-(contained.pid ?? 0), 'SIGKILL');
    await exited;
  });
  for (let i = 0; i < 600 && !(await stat(compressing).catch(() => undefined)); i += 1) await new Promise((resolve) => setTimeout(resolve, 50));
  const stagingRoot = path.join(cache, 'staging');
  const theirs = await readdir(stagingRoot);
  assert.equal(theirs.length, 1, theirs.join(' '));
  assert.notEqual(theirs[0]?.split('.')[2], hostTag(), 'another PID namespace names its temps apart');
  const again = await runCli(['packager', 'upload', '--all', '--config', config], { cwd: dir, env: { AUTOTEST_CACHE_DIR: cache } });
  assert.equal(again.code, 0, again.stderr);
  assert.ok((await readdir(stagingRoot)).includes(theirs[0] ?? ''), "the contained packager's staging folder is still there");
  assert.deepEqual(await checkConsistency(repos[0] ?? ''), { entries: 6, problems: [] });
});

/**
 * An lbzip2 on PATH that never finishes (it touches `compressing` when it starts), and the
 * environment of a packager run that finds it, with its cache folder.
 */
async function stuckCompressor(dir: string): Promise<{ compressing: string; cache: string; env: NodeJS.ProcessEnv }> {
  const bin = path.join(dir, 'bin');
  await mkdir(bin);
  const compressing = path.join(dir, 'compressing');
  await writeFile(path.join(bin, 'lbzip2'), `#!/bin/sh\ntouch '${compressing}'\nexec sleep 60\n`, { mode: 0o755 });
  const cache = path.join(dir, '.cache');
  return { compressing, cache, env: { ...process.env, AUTOTEST_CACHE_DIR: cache, AUTOTEST_CONFIG: '', PATH: `${bin}:${process.env.PATH ?? ''}` } };
}

test('tar files are written one at a time: the first turns to the smallest of those waiting together, the others in the order asked, and a failed one stops none', async () => {
  const tarring = tarTurns(2);
  const order: string[] = [];
  let running = 0;
  const task =
    (name: string, fail = false) =>
    async (): Promise<string> => {
      running += 1;
      assert.equal(running, 1, `${name} runs alone`);
      order.push(name);
      await new Promise((resolve) => setTimeout(resolve, 5));
      running -= 1;
      if (fail) throw new Error(`${name} failed`);
      return name;
    };
  const results = await Promise.allSettled([
    tarring(9_000_000, task('large')),
    tarring(200_000, task('small', true)),
    tarring(1_000_000, task('middle')),
    tarring(50_000, task('smallest')),
  ]);
  assert.deepEqual(order, ['smallest', 'small', 'large', 'middle']);
  assert.deepEqual(
    results.map((r) => (r.status === 'fulfilled' ? r.value : String(r.reason))),
    ['large', 'Error: small failed', 'middle', 'smallest'],
  );
});

test('upload --all packs a test folder reached through a symlink, and takes no plain file or dot folder of tests/ for a package', async (t) => {
  const { dir, client, config } = await setup(t);
  await mkdir(path.join(dir, 'elsewhere', 'linked'), { recursive: true });
  await writeFile(path.join(dir, 'elsewhere', 'linked', 'control'), 'job.run_test("linked")\n');
  await symlink(path.join(dir, 'elsewhere', 'linked'), path.join(client, 'tests', 'linked'));
  await writeFile(path.join(client, 'tests', 'README'), 'not a test\n');
  await mkdir(path.join(client, 'tests', '.hidden'));
  const report = await uploadJson(dir, config, '--all');
  assert.ok(report.packed.includes('test-linked.tar.bz2'), report.packed.join(' '));
  assert.deepEqual(
    report.packed.filter((file) => /README|hidden/.test(file)),
    [],
  );
});

test('an upload of one package starts one compressor helper, and one of plain files alone none, whatever --jobs says', async (t) => {
  const { dir, config } = await setup(t, ['repo1']);
  // An sh on PATH in front of the real one, logging each compressor helper shell it starts.
  const bin = path.join(dir, 'bin');
  await mkdir(bin);
  const log = path.join(dir, 'helpers.log');
  await writeFile(path.join(bin, 'sh'), `#!/bin/sh\ncase "$2" in *'read -r count'*) echo helper >> '${log}';; esac\nexec /bin/sh "$@"\n`, { mode: 0o755 });
  const env = { PATH: `${bin}:${process.env.PATH ?? ''}` };
  const helpers = async (...args: string[]): Promise<number> => {
    await writeFile(log, '');
    const result = await runCli(['packager', 'upload', '--config', config, '--json', '--jobs', '4', ...args], { cwd: dir, env });
    assert.equal(result.code, 0, result.stderr);
    return (await readFile(log, 'utf8')).split('\n').filter((line) => line === 'helper').length;
  };
  assert.equal(await helpers('-t', 'hello'), 1, 'one package');
  const kernel = path.join(dir, 'vmlinuz-6.1');
  await writeFile(kernel, 'kernel image bytes');
  assert.equal(await helpers('-f', kernel), 0, 'a plain file alone');
});

test('a location whose published tarball cannot be looked at (a symlink loop) is reported as failed, and the other location still gets the changed package', async (t) => {
  const { dir, config, client, repos } = await setup(t);
  const [repo1 = '', repo2 = ''] = repos;
  assert.equal((await runCli(['packager', 'upload', '--all', '--config', config], { cwd: dir })).code, 0);
  // sleeptest unchanged but its tarball in repo1 a link to itself; dbench changed.
  await rm(path.join(repo1, 'test-sleeptest.tar.bz2'));
  await symlink('test-sleeptest.tar.bz2', path.join(repo1, 'test-sleeptest.tar.bz2'));
  await appendFile(path.join(client, 'tests', 'dbench', 'dbench.mjs'), '// changed\n');
  const result = await runCli(['packager', 'upload', '--all', '--config', config], { cwd: dir });
  assert.equal(result.code, 1, result.stderr);
  const failedLine = result.stderr.split('\n').find((line) => line.includes('ELOOP'));
  assert.ok(failedLine?.includes(repo1) === true && !result.stderr.includes(`${repo2}:`), result.stderr);
  assert.deepEqual(await checkConsistency(repo2), { entries: 6, problems: [] });
  const { stdout } = await execFileAsync('tar', ['-xjOf', path.join(repo2, 'test-dbench.tar.bz2'), 'dbench.mjs']);
  assert.match(stdout, /\/\/ changed\n$/, 'repo2 holds the changed dbench');
  const staging = path.join(dir, '.cache', 'staging');
  assert.deepEqual(await readdir(staging).catch(() => []), [], 'no staging folder is left');
});
