import assert from 'node:assert/strict';
import { createWriteStream } from 'node:fs';
import { access, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import tar, { type Header } from 'tar-stream';
import { extractTarball, packEntries, walkTree, combineRules } from '../src/packages/index.js';
import { isAutotestError } from '../src/errors.js';
import { tempDir, EXAMPLE_CLIENT } from './helpers.js';

type EntrySpec = Partial<Header> & Pick<Header, 'name'> & { body?: string };

/** Builds a hostile tar.gz by hand: the packager would never write one. */
async function craftArchive(file: string, entries: EntrySpec[]): Promise<void> {
  const pack = tar.pack();
  const done = pipeline(pack, createGzip(), createWriteStream(file));
  for (const { body, ...header } of entries) {
    await new Promise<void>((resolve, reject) => {
      pack.entry({ mode: 0o644, ...header }, body ?? '', (error) => {
        if (error) reject(error);
        else resolve();
      });
    });
  }
  pack.finalize();
  await done;
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(() => true, () => false);
}

async function expectRefused(t: TestContext, entries: EntrySpec[], entryName: string, outside: string): Promise<void> {
  const dir = await tempDir(t);
  const archive = path.join(dir, 'evil.tar.gz');
  await craftArchive(archive, entries);
  const dest = path.join(dir, 'install', 'pkg');
  await assert.rejects(extractTarball(archive, dest), (error: unknown) =>
    isAutotestError(error, 'ERR_UNSAFE_ARCHIVE') && error.message.includes(JSON.stringify(entryName)));
  assert.equal(await exists(dest), false, 'the half-extracted folder is removed');
  assert.equal(await exists(path.join(dir, outside)), false, `nothing written at ${outside}`);
  assert.deepEqual(await readdir(dir), ['evil.tar.gz', 'install'].sort());
}

test('refuses an archive entry with an absolute path', async (t) => {
  const dir = await tempDir(t);
  await expectRefused(t, [{ name: `${dir}-abs/pwned`, body: 'x' }], `${dir}-abs/pwned`, 'pwned');
});

test('refuses an archive entry with ".." in its path', async (t) => {
  await expectRefused(t, [{ name: 'ok.txt', body: 'fine' }, { name: '../../escaped', body: 'x' }], '../../escaped', 'escaped');
});

test('refuses a symlink pointing outside, so a file written through it never lands there', async (t) => {
  await expectRefused(t, [
    { name: 'link', type: 'symlink', linkname: '../..' },
    { name: 'link/escaped', body: 'x' },
  ], 'link', 'escaped');
});

test('refuses a chain of symlinks that each look inside but together lead out', async (t) => {
  await expectRefused(t, [
    { name: 's', type: 'symlink', linkname: '.' },
    { name: 'a', type: 'symlink', linkname: 's/..' },
    { name: 'a/escaped', body: 'x' },
  ], 'a', 'escaped');
});

test('refuses a hardlink to a file outside the install folder', async (t) => {
  await expectRefused(t, [{ name: 'hard', type: 'link', linkname: '../../evil.tar.gz' }], 'hard', 'hard');
});

test('refuses device nodes and FIFOs', async (t) => {
  await expectRefused(t, [{ name: 'dev', type: 'character-device', devmajor: 1, devminor: 3 }], 'dev', 'dev');
  await expectRefused(t, [{ name: 'fifo', type: 'fifo' }], 'fifo', 'fifo');
});

test('refuses a truncated archive and leaves no folder behind', async (t) => {
  const dir = await tempDir(t);
  const tree = path.join(EXAMPLE_CLIENT, 'tests', 'dbench');
  const archive = path.join(dir, 'test-dbench.tar.bz2');
  await packEntries(await walkTree(tree, combineRules()), archive, 'bzip2');
  const bytes = await readFile(archive);
  await writeFile(archive, bytes.subarray(0, Math.floor(bytes.length / 2)));
  const dest = path.join(dir, 'dbench');
  await assert.rejects(extractTarball(archive, dest), (error: unknown) => isAutotestError(error, 'ERR_CORRUPT_ARCHIVE') || isAutotestError(error, 'ERR_TOOL'));
  assert.equal(await exists(dest), false);
});

test('extracts a package with its nested folders, symlink and modes', async (t) => {
  const dir = await tempDir(t);
  const archive = path.join(dir, 'test-dbench.tar.bz2');
  await packEntries(await walkTree(path.join(EXAMPLE_CLIENT, 'tests', 'dbench'), combineRules()), archive, 'bzip2');
  const dest = path.join(dir, 'out');
  const result = await extractTarball(archive, dest);
  assert.ok(result.files >= 4);
  assert.equal(await readFile(path.join(dest, 'client.txt'), 'utf8'), await readFile(path.join(dest, 'src', 'client.txt'), 'utf8'));
  await mkdir(path.join(dir, 'again'));
  await assert.rejects(extractTarball(archive, path.join(dir, 'again')), /EEXIST/);
});
