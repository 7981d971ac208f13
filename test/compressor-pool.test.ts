import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, stat, writeFile, mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { combineRules, compressTarFile, createCompressorPool, walkTree, writeTarFile } from '../src/packages/index.js';
import { random, text } from '../bench/tree.js';
import { tempDir } from './helpers.js';

const execFileAsync = promisify(execFile);

/**
 * A compressor on PATH in front of the real one: it logs how many files each run is given,
 * and runs `before` (shell text, with $n the number of files) before handing over.
 */
async function loggingCompressor(t: TestContext, before = ''): Promise<{ dir: string; log: string; restore: () => void }> {
  const dir = await tempDir(t);
  const real = (await execFileAsync('sh', ['-c', 'command -v lbzip2 || command -v bzip2'])).stdout.trim();
  const bin = path.join(dir, 'bin');
  await mkdir(bin);
  const log = path.join(dir, 'runs.log');
  await writeFile(
    path.join(bin, path.basename(real)),
    `#!/bin/sh\nn=0\nfor a; do case $a in *.tar) n=$((n + 1));; esac; done\necho "$n" >> '${log}'\n${before}\nexec '${real}' "$@"\n`,
    { mode: 0o755 },
  );
  const saved = process.env.PATH;
  process.env.PATH = `${bin}:${saved ?? ''}`;
  return {
    dir,
    log,
    restore: () => {
      process.env.PATH = saved;
    },
  };
}

async function smallFiles(dir: string, count: number): Promise<string[]> {
  const rand = random(3);
  const files: string[] = [];
  for (let i = 0; i < count; i += 1) {
    const file = path.join(dir, `package-${String(i)}.tar`);
    await writeFile(file, text(2000 + Math.floor(rand() * 20_000), rand), { mode: 0o644 });
    files.push(file);
  }
  return files;
}

async function runsLogged(log: string): Promise<number[]> {
  return (await readFile(log, 'utf8')).trim().split('\n').map(Number);
}

async function aloneBytes(file: string, tool: string): Promise<Buffer> {
  const { stdout } = await execFileAsync('sh', ['-c', `${tool} -9 -c < "$1"`, 'sh', file], { encoding: 'buffer' });
  return stdout;
}

test('a pool of one helper compresses ten files queued at once in fewer compressor runs than files, each into the bytes the compressor gives it alone', async (t) => {
  const { dir, log, restore } = await loggingCompressor(t);
  t.after(restore);
  const files = await smallFiles(dir, 10);
  const pool = await createCompressorPool('bzip2', { size: 1, workDir: dir });
  const outputs = await Promise.all(files.map((file) => pool.compressFile(file, 20_000)));
  await pool.close();
  const runs = await runsLogged(log);
  assert.equal(
    runs.reduce((a, b) => a + b, 0),
    10,
  );
  assert.ok(runs.length < 10, `ten files in ${String(runs.length)} runs: ${runs.join(' ')}`);
  for (const [i, output] of outputs.entries()) {
    const file = files[i] ?? '';
    assert.equal(output, `${file}.bz2`);
    assert.deepEqual(await readFile(output), await aloneBytes(file, pool.tool), `${output} is what ${pool.tool} writes for the file alone`);
    assert.equal((await stat(file)).isFile(), true, 'the tar file is kept for the caller to remove');
  }
});

test('a run of several files that fails goes again one file at a time, so that only the file that fails is reported, with the words of the compressor', async (t) => {
  const { dir, log, restore } = await loggingCompressor(t, 'case "$*" in *package-3.tar*) echo "no space left on the pretend disk" >&2; exit 3;; esac');
  t.after(restore);
  const files = await smallFiles(dir, 8);
  const pool = await createCompressorPool('bzip2', { size: 1, workDir: dir });
  const results = await Promise.allSettled(files.map((file) => pool.compressFile(file, 20_000)));
  await pool.close();
  for (const [i, result] of results.entries()) {
    const why = result.status === 'rejected' ? String(result.reason) : '';
    if (i === 3) assert.match(why, /failed to compress .*package-3\.tar \(exit code 3\): no space left on the pretend disk/);
    else assert.equal(why, '', `package-${String(i)} is compressed`);
  }
  assert.ok(
    (await runsLogged(log)).some((n) => n > 1),
    'some run held several files',
  );
  const left = (await readdir(dir)).filter((f) => f.endsWith('.bz2'));
  assert.equal(left.includes('package-3.tar.bz2'), false, 'nothing of the failed file is left');
  assert.equal(left.length, 7);
});

test('a helper killed in the middle of a run of several files loses none of them: each goes again alone in a new helper', async (t) => {
  // The first run of several files kills the shell that runs it, as the OOM killer would, and
  // says it succeeded: were the shell alive, its answer would be believed and the outputs missing.
  const { dir, log, restore } = await loggingCompressor(
    t,
    `if [ "$n" -gt 1 ] && mkdir "$(dirname "$0")/killed-once" 2>/dev/null; then kill -9 $PPID; exit 0; fi`,
  );
  t.after(restore);
  const files = await smallFiles(dir, 8);
  const pool = await createCompressorPool('bzip2', { size: 1, workDir: dir });
  const outputs = await Promise.all(files.map((file) => pool.compressFile(file, 20_000)));
  await pool.close();
  const runs = await runsLogged(log);
  assert.ok(
    runs.some((n) => n > 1),
    `a run of several files was killed: ${runs.join(' ')}`,
  );
  for (const [i, output] of outputs.entries()) assert.deepEqual(await readFile(output), await aloneBytes(files[i] ?? '', pool.tool));
});

test('the pool refuses a file whose output is already there, before any run, and that file keeps its bytes', async (t) => {
  const dir = await tempDir(t);
  const [file] = await smallFiles(dir, 1);
  await writeFile(`${file ?? ''}.bz2`, 'precious');
  const pool = await createCompressorPool('bzip2', { size: 1, workDir: dir });
  await assert.rejects(pool.compressFile(file ?? '', 20_000), /package-0\.tar\.bz2 is there already/);
  await pool.close();
  assert.equal(await readFile(`${file ?? ''}.bz2`, 'utf8'), 'precious');
});

test('a package packed through the pool under umask 077 is a 0644 tarball that GNU tar reads, and its tar file is gone', async (t) => {
  const dir = await tempDir(t);
  const tree = path.join(dir, 'tree');
  await mkdir(path.join(tree, 'sub'), { recursive: true });
  await writeFile(path.join(tree, 'sub', 'a.py'), 'print(1)\n');
  const old = process.umask(0o077);
  t.after(() => process.umask(old));
  const pool = await createCompressorPool('bzip2', { size: 1, workDir: dir });
  const tar = path.join(dir, 'test-a.tar');
  await writeTarFile(await walkTree(tree, combineRules()), tar);
  const digests = await compressTarFile(tar, 1024, pool, `${tar}.bz2`);
  await pool.close();
  const tarball = `${tar}.bz2`;
  assert.equal((await stat(tarball)).mode & 0o777, 0o644);
  assert.equal(digests.size, (await stat(tarball)).size);
  assert.match((await execFileAsync('tar', ['-tjf', tarball])).stdout, /sub\/a\.py/);
  await assert.rejects(stat(tar), { code: 'ENOENT' });
});

test('LBZIP2, BZIP2 or BZIP options in the environment (-c) change nothing: each file gets its own output and the answers stay in step', async (t) => {
  const dir = await tempDir(t);
  const files = await smallFiles(dir, 6);
  const saved = { LBZIP2: process.env.LBZIP2, BZIP2: process.env.BZIP2, BZIP: process.env.BZIP };
  for (const name of ['LBZIP2', 'BZIP2', 'BZIP'] as const) process.env[name] = '-c';
  t.after(() => {
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) Reflect.deleteProperty(process.env, name);
      else process.env[name] = value;
    }
  });
  const pool = await createCompressorPool('bzip2', { size: 1, workDir: dir });
  const results = await Promise.allSettled(files.map((file) => pool.compressFile(file, 20_000)));
  await pool.close();
  const outputs = results.map((result) => {
    if (result.status === 'rejected') throw result.reason;
    return result.value;
  });
  for (const [i, output] of outputs.entries()) assert.deepEqual(await readFile(output), await aloneBytes(files[i] ?? '', pool.tool));
});

test('a bzip2 pool whose work folder path is over 1024 characters long still compresses (bzip2 refuses longer file names)', async (t) => {
  // bzip2 in front of lbzip2, under lbzip2's name: the tool the pool picked is looked up once per process.
  const { dir, restore } = await loggingCompressor(t, `set -- $(for a; do [ "$a" = -n1 ] || printf '%s\\n' "$a"; done); exec bzip2 "$@"`);
  t.after(restore);
  let deep = dir;
  for (let i = 0; i < 5; i += 1) deep = path.join(deep, 'd'.repeat(220));
  await mkdir(deep, { recursive: true });
  const files = await smallFiles(deep, 3);
  const pool = await createCompressorPool('bzip2', { size: 1, workDir: deep });
  const results = await Promise.allSettled(files.map((file) => pool.compressFile(file, 20_000)));
  await pool.close();
  const outputs = results.map((result) => {
    if (result.status === 'rejected') throw result.reason;
    return result.value;
  });
  for (const [i, output] of outputs.entries()) assert.deepEqual(await readFile(output), await aloneBytes(files[i] ?? '', 'bzip2'));
});

test('a compressor that exits 0 without writing its output fails the package saying so, and leaves nothing', async (t) => {
  const { dir, restore } = await loggingCompressor(t, 'exit 0');
  t.after(restore);
  const tree = path.join(dir, 'tree');
  await mkdir(tree);
  await writeFile(path.join(tree, 'a.py'), 'print(1)\n');
  const pool = await createCompressorPool('bzip2', { size: 1, workDir: dir });
  const tar = path.join(dir, 'test-a.tar');
  await writeTarFile(await walkTree(tree, combineRules()), tar);
  await assert.rejects(compressTarFile(tar, 1024, pool, `${tar}.bz2`), /exited 0 but wrote no .*test-a\.tar\.bz2/);
  await pool.close();
  assert.deepEqual(
    (await readdir(dir)).filter((f) => f.startsWith('test-a')),
    [],
  );
});

/** The pool's helper shells that are children of this process. */
async function helperShells(): Promise<number> {
  const { stdout } = await execFileAsync('ps', ['--ppid', String(process.pid), '-o', 'args=']);
  return stdout.split('\n').filter((line) => line.includes('read -r count')).length;
}

test('a pool started ahead has all its helpers running before the first file, and compresses with them', async (t) => {
  const dir = await tempDir(t);
  const [file] = await smallFiles(dir, 1);
  const pool = await createCompressorPool('bzip2', { size: 2, workDir: dir });
  assert.equal(await helperShells(), 0, 'no helper before start');
  pool.start();
  assert.equal(await helperShells(), 2);
  assert.equal(await pool.compressFile(file ?? '', 20_000), `${file ?? ''}.bz2`);
  assert.equal(await helperShells(), 2, 'no helper more for the file');
  await pool.close();
  assert.equal(await helperShells(), 0);
  assert.throws(() => {
    pool.start();
  }, /after close/);
});

test('once told it is finishing, a pool shares the last queued files out in runs of a quarter each, where before one run took all that waited', async (t) => {
  const { dir, log, restore } = await loggingCompressor(t, 'case "$*" in *slow-*) sleep 0.5;; esac');
  t.after(restore);
  const runsOf = async (finishing: boolean): Promise<number[]> => {
    await writeFile(log, '');
    const work = path.join(dir, finishing ? 'finishing' : 'plain');
    await mkdir(work);
    const pool = await createCompressorPool('bzip2', { size: 2, workDir: work });
    pool.start();
    // Four slow runs fill both helpers' two slots; the twelve files then wait for a slot together.
    const slow = await Promise.all(
      [0, 1, 2, 3].map(async (i) => writeFile(path.join(work, `slow-${String(i)}.tar`), 'x').then(() => path.join(work, `slow-${String(i)}.tar`))),
    );
    const slowDone = Promise.all(slow.map((file) => pool.compressFile(file, 1000)));
    await new Promise((resolve) => setTimeout(resolve, 100));
    if (finishing) pool.finishing();
    const files = await smallFiles(work, 12);
    await Promise.all([slowDone, ...files.map((file) => pool.compressFile(file, 100_000))]);
    await pool.close();
    return runsLogged(log);
  };
  const plain = await runsOf(false);
  assert.deepEqual(plain, [1, 1, 1, 1, 12], 'the first slot to free takes all twelve');
  const shared = await runsOf(true);
  assert.equal(
    shared.reduce((a, b) => a + b, 0),
    16,
  );
  assert.ok(Math.max(...shared.slice(4)) <= 3, `runs after the slow ones: ${shared.slice(4).join(' ')}`);
});
