import assert from 'node:assert/strict';
import { access, mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { gunzipSync, gzipSync } from 'node:zlib';
import { extractTarball, packEntries, walkTree, combineRules } from '../src/packages/index.js';
import { isAutotestError, type AutotestError, type ErrorCode } from '../src/errors.js';
import { craftArchive, type EntrySpec } from './fixtures/archives.js';
import { tempDir, mountTmpfs, EXAMPLE_CLIENT } from './helpers.js';

async function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  );
}

async function expectRefused(
  t: TestContext,
  entries: EntrySpec[],
  entryName: string,
  outside: string,
  code: ErrorCode = 'ERR_UNSAFE_ARCHIVE',
): Promise<AutotestError> {
  const dir = await tempDir(t);
  const archive = path.join(dir, 'evil.tar.gz');
  await craftArchive(archive, entries);
  const dest = path.join(dir, 'install', 'pkg');
  const error = await extractTarball(archive, dest).then(
    () => assert.fail('extracted'),
    (e: unknown) => e,
  );
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
  await expectRefused(
    t,
    [
      { name: 'ok.txt', body: 'fine' },
      { name: '../../escaped', body: 'x' },
    ],
    '../../escaped',
    'escaped',
  );
});

test('refuses a symlink pointing outside, so a file written through it never lands there', async (t) => {
  await expectRefused(
    t,
    [
      { name: 'link', type: 'symlink', linkname: '../..' },
      { name: 'link/escaped', body: 'x' },
    ],
    'link',
    'escaped',
  );
});

test('refuses a chain of symlinks that each look inside but together lead out', async (t) => {
  await expectRefused(
    t,
    [
      { name: 's', type: 'symlink', linkname: '.' },
      { name: 'a', type: 'symlink', linkname: 's/..' },
      { name: 'a/escaped', body: 'x' },
    ],
    'a',
    'escaped',
  );
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
  await assert.rejects(
    extractTarball(archive, dest),
    (error: unknown) => isAutotestError(error, 'ERR_CORRUPT_ARCHIVE') && error.message.includes(archive) && /damaged or truncated/.test(error.hint ?? ''),
  );
  assert.equal(await exists(dest), false);
});

test('refuses a tar header with a bad checksum as damaged', async (t) => {
  const dir = await tempDir(t);
  const archive = path.join(dir, 'bad.tar.gz');
  await craftArchive(path.join(dir, 'good.tar.gz'), [{ name: 'a.txt', body: 'a' }]);
  const tarBytes = gunzipSync(await readFile(path.join(dir, 'good.tar.gz')));
  tarBytes[0] = 'b'.charCodeAt(0);
  await writeFile(archive, gzipSync(tarBytes));
  await assert.rejects(
    extractTarball(archive, path.join(dir, 'out')),
    (error: unknown) => isAutotestError(error, 'ERR_CORRUPT_ARCHIVE') && /damaged or truncated/.test(error.hint ?? ''),
  );
  assert.equal(await exists(path.join(dir, 'out')), false);
});

test('refuses a file whose missing parent folder is an earlier symlink, even one pointing inside', async (t) => {
  const error = await expectRefused(
    t,
    [
      { name: 'real/', type: 'directory' },
      { name: 'a/s', type: 'symlink', linkname: '../real' },
      { name: 'a/s/x/y/escaped', body: 'x' },
    ],
    'a/s/x/y/escaped',
    'escaped',
  );
  assert.match(error.message, /"a\/s" on its path is a symlink/);
});

test('refuses ".." behind a ./ prefix and deep missing folders', async (t) => {
  await expectRefused(t, [{ name: './a/b/c/../../../../escaped', body: 'x' }], './a/b/c/../../../../escaped', 'escaped');
});

test('refuses a symlink or a file that would replace a folder already extracted, saying so', async (t) => {
  const error = await expectRefused(
    t,
    [
      { name: 'x/a.txt', body: 'a' },
      { name: 'x', type: 'symlink', linkname: '.' },
      { name: 'x/escaped', body: 'x' },
    ],
    'x',
    'escaped',
    'ERR_BAD_ARCHIVE',
  );
  assert.match(error.message, /a folder of that name came earlier/);
  await expectRefused(
    t,
    [
      { name: 'x/', type: 'directory' },
      { name: 'x', body: 'a file' },
    ],
    'x',
    'x',
    'ERR_BAD_ARCHIVE',
  );
});

test('refuses an entry below an earlier file, naming the entry and the file on its path', async (t) => {
  const error = await expectRefused(
    t,
    [
      { name: 'a', body: 'a file' },
      { name: 'a/b/c.txt', body: 'x' },
    ],
    'a/b/c.txt',
    'c.txt',
    'ERR_BAD_ARCHIVE',
  );
  assert.match(error.message, /"a" on its path is a file/);
  await expectRefused(
    t,
    [
      { name: 'a', body: 'a file' },
      { name: 'a/', type: 'directory' },
    ],
    'a/',
    'a',
    'ERR_BAD_ARCHIVE',
  );
});

test('refuses a hardlink to a file reached through a symlinked folder', async (t) => {
  await expectRefused(
    t,
    [
      { name: 'real/f', body: 'f' },
      { name: 's', type: 'symlink', linkname: 'real' },
      { name: 'h', type: 'link', linkname: 's/f' },
    ],
    'h',
    'h',
  );
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

test('extracts 300 files 1,000 folders deep from a small archive, every file in place', async (t) => {
  const dir = await tempDir(t);
  const archive = path.join(dir, 'deep.tar.gz');
  const deep = Array.from({ length: 1000 }, () => 'd').join('/');
  await craftArchive(
    archive,
    Array.from({ length: 300 }, (_, i) => ({ name: `${deep}/f${i.toString()}.txt`, body: 'x' })),
  );
  assert.ok((await stat(archive)).size < 64_000, 'the archive stays small: the depth is in its names, not its bytes');
  const dest = path.join(dir, 'out');
  assert.deepEqual(await extractTarball(archive, dest), { files: 300, bytes: 300 });
  assert.equal((await readdir(path.join(dest, deep))).length, 300);
  assert.equal(await readFile(path.join(dest, deep, 'f299.txt'), 'utf8'), 'x');
});

test('a full disk is called a full disk, naming its mount point and the bytes still needed, and nothing half-extracted stays', async (t) => {
  const dir = await tempDir(t);
  const mnt = await mountTmpfs(t, dir, '2m');
  const sizes = [1_000_000, 1_000_000, 1_000_000, 1_000_000];
  const total = sizes.reduce((a, b) => a + b, 0);
  const tree = path.join(dir, 'tree');
  await mkdir(tree);
  for (const [i, size] of sizes.entries()) await writeFile(path.join(tree, `f${i.toString()}.bin`), Buffer.alloc(size, i + 1));
  const gzipped = path.join(dir, 'big.tar.gz');
  await craftArchive(
    gzipped,
    sizes.map((size, i) => ({ name: `f${i.toString()}.bin`, body: Buffer.alloc(size, i + 1) })),
  );
  const bzipped = path.join(dir, 'big.tar.bz2');
  await packEntries(await walkTree(tree, combineRules()), bzipped, 'bzip2');
  // Twice each: the parser's own "Premature close" once lost the race to the disk's error.
  for (const archive of [gzipped, bzipped, gzipped, bzipped]) {
    const dest = path.join(mnt, 'tests', 'big');
    const error = await extractTarball(archive, dest).then(
      () => assert.fail('extracted'),
      (e: unknown) => e,
    );
    assert.ok(isAutotestError(error, 'ERR_NO_SPACE'), String(error));
    assert.ok(error.message.startsWith(`${dest}: the disk is full (ENOSPC) on the file system mounted at ${mnt}:`), error.message);
    assert.ok(error.message.includes(archive), error.message);
    const needed = Number(/needed at least (\d+) more bytes/.exec(error.message)?.[1]);
    assert.ok(needed >= total - 2 * 1024 * 1024 && needed <= total, `${needed.toString()} bytes needed`);
    assert.match(error.message, new RegExp(`${total.toString()} bytes of files in all`));
    assert.match(error.hint ?? '', new RegExp(`free at least ${needed.toString()} bytes on ${mnt}`));
    assert.doesNotMatch(`${error.message} ${error.hint ?? ''}`, /damaged|truncated|Premature/);
    assert.deepEqual(await readdir(path.join(mnt, 'tests')), [], 'the half-extracted folder is removed');
  }
});

test('refuses an archive with more entries or more bytes than its limits, naming the limit, and keeps nothing', async (t) => {
  const dir = await tempDir(t);
  const archive = path.join(dir, 'five.tar.gz');
  await craftArchive(archive, [
    { name: 'sub/', type: 'directory' },
    ...Array.from({ length: 5 }, (_, i) => ({ name: `sub/f${i.toString()}`, body: '0123456789' })),
  ]);
  const dest = path.join(dir, 'out');
  await assert.rejects(
    extractTarball(archive, dest, { maxEntries: 4, names: { maxEntries: 'max_upload_entries = 4 in [SERVER]' } }),
    (error: unknown) =>
      isAutotestError(error, 'ERR_TOO_LARGE') &&
      error.message.includes('entry "sub/f3" refused: the archive holds more than 4 entries (max_upload_entries = 4 in [SERVER])') &&
      /raise max_upload_entries/.test(error.hint ?? ''),
  );
  assert.equal(await exists(dest), false);
  await assert.rejects(
    extractTarball(archive, dest, { maxBytes: 25 }),
    (error: unknown) => isAutotestError(error, 'ERR_TOO_LARGE') && error.message.includes('entry "sub/f2" refused: the archive unpacks to more than 25 bytes'),
  );
  assert.equal(await exists(dest), false);
  assert.deepEqual(await extractTarball(archive, dest, { maxEntries: 6, maxBytes: 50 }), { files: 5, bytes: 50 });
});

test('an extraction whose signal is aborted throws its reason and leaves nothing', async (t) => {
  const dir = await tempDir(t);
  const archive = path.join(dir, 'a.tar.gz');
  await craftArchive(archive, [{ name: 'a.txt', body: 'a' }]);
  const controller = new AbortController();
  controller.abort(new Error('the uploader went away'));
  await assert.rejects(extractTarball(archive, path.join(dir, 'out'), { signal: controller.signal }), /the uploader went away/);
  assert.equal(await exists(path.join(dir, 'out')), false);
});
