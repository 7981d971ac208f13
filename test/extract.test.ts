import assert from 'node:assert/strict';
import { createWriteStream } from 'node:fs';
import { access, mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { pipeline } from 'node:stream/promises';
import { createGzip, gunzipSync, gzipSync } from 'node:zlib';
import tar, { type Header } from 'tar-stream';
import { extractTarball, packEntries, walkTree, combineRules } from '../src/packages/index.js';
import { isAutotestError, type AutotestError, type ErrorCode } from '../src/errors.js';
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

async function expectRefused(t: TestContext, entries: EntrySpec[], entryName: string, outside: string, code: ErrorCode = 'ERR_UNSAFE_ARCHIVE'): Promise<AutotestError> {
  const dir = await tempDir(t);
  const archive = path.join(dir, 'evil.tar.gz');
  await craftArchive(archive, entries);
  const dest = path.join(dir, 'install', 'pkg');
  const error = await extractTarball(archive, dest).then(() => assert.fail('extracted'), (e: unknown) => e);
  assert.ok(isAutotestError(error, code), `${code}: ${String(error)}`);
  assert.ok(error.message.includes(`entry ${JSON.stringify(entryName)}`), error.message);
  assert.doesNotMatch(`${error.message} ${error.hint ?? ''}`, /damaged|truncated/, 'a refusal is never blamed on a damaged download');
  assert.equal(await exists(dest), false, 'the half-extracted folder is removed');
  assert.equal(await exists(path.join(dir, outside)), false, `nothing written at ${outside}`);
  assert.deepEqual(await readdir(dir), ['evil.tar.gz', 'install'].sort());
  return error;
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
  await assert.rejects(extractTarball(archive, dest), (error: unknown) =>
    isAutotestError(error, 'ERR_CORRUPT_ARCHIVE') && error.message.includes(archive) && /damaged or truncated/.test(error.hint ?? ''));
  assert.equal(await exists(dest), false);
});

test('refuses a tar header with a bad checksum as damaged', async (t) => {
  const dir = await tempDir(t);
  const archive = path.join(dir, 'bad.tar.gz');
  await craftArchive(path.join(dir, 'good.tar.gz'), [{ name: 'a.txt', body: 'a' }]);
  const tarBytes = gunzipSync(await readFile(path.join(dir, 'good.tar.gz')));
  tarBytes[0] = 'b'.charCodeAt(0);
  await writeFile(archive, gzipSync(tarBytes));
  await assert.rejects(extractTarball(archive, path.join(dir, 'out')), (error: unknown) =>
    isAutotestError(error, 'ERR_CORRUPT_ARCHIVE') && /damaged or truncated/.test(error.hint ?? ''));
  assert.equal(await exists(path.join(dir, 'out')), false);
});

test('refuses a file whose missing parent folder is an earlier symlink, even one pointing inside', async (t) => {
  const error = await expectRefused(t, [
    { name: 'real/', type: 'directory' },
    { name: 'a/s', type: 'symlink', linkname: '../real' },
    { name: 'a/s/x/y/escaped', body: 'x' },
  ], 'a/s/x/y/escaped', 'escaped');
  assert.match(error.message, /"a\/s" on its path is a symlink/);
});

test('refuses ".." behind a ./ prefix and deep missing folders', async (t) => {
  await expectRefused(t, [{ name: './a/b/c/../../../../escaped', body: 'x' }], './a/b/c/../../../../escaped', 'escaped');
});

test('refuses a symlink or a file that would replace a folder already extracted, saying so', async (t) => {
  const error = await expectRefused(t, [
    { name: 'x/a.txt', body: 'a' },
    { name: 'x', type: 'symlink', linkname: '.' },
    { name: 'x/escaped', body: 'x' },
  ], 'x', 'escaped', 'ERR_BAD_ARCHIVE');
  assert.match(error.message, /a folder of that name came earlier/);
  await expectRefused(t, [{ name: 'x/', type: 'directory' }, { name: 'x', body: 'a file' }], 'x', 'x', 'ERR_BAD_ARCHIVE');
});

test('refuses an entry below an earlier file, naming the entry and the file on its path', async (t) => {
  const error = await expectRefused(t, [{ name: 'a', body: 'a file' }, { name: 'a/b/c.txt', body: 'x' }], 'a/b/c.txt', 'c.txt', 'ERR_BAD_ARCHIVE');
  assert.match(error.message, /"a" on its path is a file/);
  await expectRefused(t, [{ name: 'a', body: 'a file' }, { name: 'a/', type: 'directory' }], 'a/', 'a', 'ERR_BAD_ARCHIVE');
});

test('refuses a hardlink to a file reached through a symlinked folder', async (t) => {
  await expectRefused(t, [
    { name: 'real/f', body: 'f' },
    { name: 's', type: 'symlink', linkname: 'real' },
    { name: 'h', type: 'link', linkname: 's/f' },
  ], 'h', 'h');
});

test('makes missing parent folders 0755 whatever the archive omits, and gives a later folder entry its own mode', async (t) => {
  const dir = await tempDir(t);
  const archive = path.join(dir, 'deep.tar.gz');
  const deep = Array.from({ length: 40 }, (_, i) => `d${i.toString()}`).join('/');
  await craftArchive(archive, [
    { name: `${deep}/leaf.txt`, body: 'leaf', mode: 0o4777 },
    { name: './d0/d1/sibling.txt', body: 'sibling' },
    { name: 'd0/d1/', type: 'directory', mode: 0o750 },
  ]);
  const dest = path.join(dir, 'out');
  assert.deepEqual(await extractTarball(archive, dest), { files: 2, bytes: 11 });
  assert.equal(await readFile(path.join(dest, deep, 'leaf.txt'), 'utf8'), 'leaf');
  assert.equal((await stat(path.join(dest, deep, 'leaf.txt'))).mode & 0o7777, 0o755, 'no setuid, no write for others');
  assert.equal((await stat(path.join(dest, 'd0'))).mode & 0o7777, 0o755);
  assert.equal((await stat(path.join(dest, 'd0', 'd1'))).mode & 0o7777, 0o750);
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
