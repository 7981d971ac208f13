import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { appendFile, readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CLI, checkConsistency, copyExampleTree, generateTree, mountTmpfs, runCli, tempDir, writeConfig } from './helpers.js';

async function listing(dir: string): Promise<string> {
  return (await readdir(dir)).sort().join(',');
}

test('refuses an upload location with less free space than minimum_free_space before writing anything, and keeps what it holds', async (t) => {
  const dir = await tempDir(t);
  const client = await copyExampleTree(dir);
  const mnt = await mountTmpfs(t, dir, '4m');
  const ok = await writeConfig(dir, { upload_location: mnt, client_dir: client, minimum_free_space: '0' }, 'ok.ini');
  assert.equal((await runCli(['packager', 'upload', '--all', '--config', ok], { cwd: dir })).code, 0);
  const before = await listing(mnt);
  const checksum = await readFile(path.join(mnt, 'packages.checksum'), 'utf8');

  await appendFile(path.join(client, 'tests', 'hello', 'hello.mjs'), '// changed\n');
  const strict = await writeConfig(dir, { upload_location: mnt, client_dir: client, minimum_free_space: '1' }, 'strict.ini');
  const result = await runCli(['packager', 'upload', '--all', '--config', strict], { cwd: dir });
  assert.equal(result.code, 1);
  assert.match(result.stderr, new RegExp(`${mnt}: 0\\.00\\d GB free, 1\\.000 GB needed`));
  assert.match(result.stderr, /hint: free some space there, or lower minimum_free_space/);
  assert.equal(await listing(mnt), before);
  assert.equal(await readFile(path.join(mnt, 'packages.checksum'), 'utf8'), checksum);
});

test('a disk that fills up during the copy publishes nothing, leaves no temp file and loses nothing stored', async (t) => {
  const dir = await tempDir(t);
  const client = await generateTree(dir, 5, 2_000_000);
  const mnt = await mountTmpfs(t, dir, '3m');
  await writeFile(path.join(mnt, 'keep-me'), 'stored before');
  const config = await writeConfig(dir, { upload_location: mnt, client_dir: client, minimum_free_space: '0' });
  const result = await runCli(['packager', 'upload', '--all', '--config', config], { cwd: dir });
  assert.equal(result.code, 1);
  assert.match(result.stderr, /disk full while copying|ENOSPC/);
  assert.equal(await readFile(path.join(mnt, 'keep-me'), 'utf8'), 'stored before');
  assert.deepEqual(
    (await readdir(mnt)).filter((f) => f.startsWith('.tmp')),
    [],
  );
  assert.deepEqual((await checkConsistency(mnt)).problems, []);
});

test('refuses an unwritable upload location (read-only mount) with its reason, and the other location still gets everything', async (t) => {
  const dir = await tempDir(t);
  const client = await copyExampleTree(dir);
  const mnt = await mountTmpfs(t, dir, '1m', ',ro');
  const good = path.join(dir, 'good');
  const config = await writeConfig(dir, { upload_location: `${mnt}, ${good}`, client_dir: client, minimum_free_space: '0' });
  const result = await runCli(['packager', 'upload', '--all', '--config', config], { cwd: dir });
  assert.equal(result.code, 1);
  assert.match(result.stderr, new RegExp(`failed: ${mnt}: upload location ${mnt}: is not writable \\(EROFS\\)`));
  assert.equal(await listing(mnt), '');
  assert.deepEqual(await checkConsistency(good), { entries: 6, problems: [] });
});

test('20 concurrent single-package uploads to one repository leave 20 index entries, each with its complete file', async (t) => {
  const dir = await tempDir(t);
  const client = await generateTree(dir, 20, 20_000);
  const repo = path.join(dir, 'repo');
  const config = await writeConfig(dir, { upload_location: repo, client_dir: client, minimum_free_space: '0' });
  const results = await Promise.all(
    Array.from({ length: 20 }, (_, i) => runCli(['packager', 'upload', '-t', `t${String(i).padStart(3, '0')}`, '--config', config], { cwd: dir })),
  );
  for (const result of results) assert.equal(result.code, 0, result.stderr);
  assert.deepEqual(await checkConsistency(repo), { entries: 20, problems: [] });
});

test('a packager killed with SIGKILL at random moments leaves every location consistent, and the next run completes', async (t) => {
  const dir = await tempDir(t);
  const client = await generateTree(dir, 24, 600_000);
  const repos = [path.join(dir, 'repo1'), path.join(dir, 'repo2')];
  const config = await writeConfig(dir, { upload_location: repos.join(', '), client_dir: client, minimum_free_space: '0' });
  const env = { ...process.env, AUTOTEST_CACHE_DIR: path.join(dir, '.cache'), AUTOTEST_CONFIG: '' };
  const trials = 8;
  let seed = 12345;
  const random = (): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  for (let trial = 0; trial < trials; trial += 1) {
    // Change a few packages each round, so kills also land while files are being replaced.
    for (let i = 0; i < 24; i += 3)
      await appendFile(path.join(client, 'tests', `t${String((i + trial) % 24).padStart(3, '0')}`, 'notes.txt'), `trial ${trial}\n`);
    const child = spawn(process.execPath, [CLI, 'packager', 'upload', '--all', '--config', config], { cwd: dir, env, stdio: 'ignore' });
    const closed = once(child, 'close');
    await sleep(100 + Math.floor(random() * 1500));
    child.kill('SIGKILL');
    await closed;
    for (const repo of repos) {
      const consistency = await checkConsistency(repo).catch(() => ({ entries: 0, problems: [] }));
      assert.deepEqual(consistency.problems, [], `trial ${trial}, ${repo}`);
    }
  }
  const final = await runCli(['packager', 'upload', '--all', '--config', config], { cwd: dir });
  assert.equal(final.code, 0, final.stderr);
  for (const repo of repos) {
    assert.deepEqual(await checkConsistency(repo), { entries: 25, problems: [] });
    assert.deepEqual(
      (await readdir(repo)).filter((f) => f.startsWith('.tmp')),
      [],
      "dead uploads' temp files are cleaned",
    );
  }
});
