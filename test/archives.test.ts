import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { loadConfig } from '../src/config/index.js';
import { buildServer } from '../src/server/index.js';
import { ARCHIVE_SHAPES, assertSameTree, craftArchive, writeSourceTree } from './fixtures/archives.js';
import { runCli, tempDir } from './helpers.js';

const TOKEN = 'test-token-0123456789';

interface Site {
  dir: string;
  url: string;
  custom: string;
}

/** `autotest serve`'s app with a custom location that takes uploads, listening on port 0. */
async function startSite(t: TestContext): Promise<Site> {
  const dir = await tempDir(t);
  const custom = path.join(dir, 'www', 'custom');
  await writeFile(
    path.join(dir, 'global_config.ini'),
    [
      '[PACKAGES]',
      `upload_location: ${path.join(dir, 'www', 'builtin')}`,
      `custom_upload_location: ${custom}`,
      `custom_download_location: ${path.join(dir, 'staging')}`,
      'minimum_free_space: 0',
      '[SERVER]',
      `upload_token: ${TOKEN}`,
      'max_upload_size: 1',
      '',
    ].join('\n'),
  );
  const config = await loadConfig({ file: path.join(dir, 'global_config.ini'), env: {} });
  const app = await buildServer({ config, logLevel: 'silent', cacheDir: path.join(dir, 'cache') });
  const url = (await app.listen({ host: '127.0.0.1', port: 0 })).replace(/\/$/, '');
  t.after(() => app.close());
  return { dir, url, custom };
}

async function upload(site: Site, file: string): Promise<{ status: number; body: { error?: string; message?: string; hint?: string } }> {
  const response = await fetch(`${site.url}/api/custom/${path.basename(file)}`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${TOKEN}` },
    body: await readFile(file),
  });
  return { status: response.status, body: (await response.json()) as { error?: string; message?: string; hint?: string } };
}

for (const shape of ARCHIVE_SHAPES) {
  test(`an archive made ${shape.made} uploads through PUT /api/custom/ and installs with client install`, async (t) => {
    const site = await startSite(t);
    const archive = path.join(site.dir, `test-${shape.name}.tar.bz2`);
    await shape.build(archive, await writeSourceTree(site.dir));

    const uploaded = await upload(site, archive);
    assert.equal(uploaded.status, 200, JSON.stringify(uploaded.body));
    assert.match(await readFile(path.join(site.custom, 'packages.checksum'), 'utf8'), new RegExp(`  test-${shape.name}\\.tar\\.bz2\\n`));

    // The base URL as the seed writes it: no trailing slash.
    const installDir = path.join(site.dir, 'install');
    const installed = await runCli(['client', 'install', 'test', shape.name, '--install-dir', installDir, '-r', `${site.url}/packages/custom`], {
      cwd: site.dir,
    });
    assert.equal(installed.code, 0, installed.stderr);
    assert.match(installed.stdout, new RegExp(`test ${shape.name}: fetched`));
    await assertSameTree(path.join(installDir, 'tests', shape.name));
  });
}

test('an upload whose entries conflict is refused with 422 naming the entry and its true cause, not as damaged', async (t) => {
  const site = await startSite(t);
  const archive = path.join(site.dir, 'test-conflict.tar.bz2');
  await craftArchive(
    archive,
    [
      { name: 'src', body: 'a file' },
      { name: 'src/a.c', body: 'int x;\n' },
    ],
    'bzip2',
  );
  const answer = await upload(site, archive);
  assert.equal(answer.status, 422);
  assert.equal(answer.body.error, 'ERR_BAD_ARCHIVE');
  assert.match(answer.body.message ?? '', /test-conflict\.tar\.bz2: entry "src\/a\.c" refused: "src" on its path is a file/);
  assert.doesNotMatch(`${answer.body.message ?? ''} ${answer.body.hint ?? ''}`, /damaged|truncated/);
});

test('an upload escaping through a missing folder entry is refused with 422 naming the entry, and nothing is published', async (t) => {
  const site = await startSite(t);
  const archive = path.join(site.dir, 'test-escape.tar.bz2');
  await craftArchive(
    archive,
    [
      { name: 'a/b/ok.txt', body: 'fine' },
      { name: 'a/b/up', type: 'symlink', linkname: '../../..' },
      { name: 'a/b/up/c/escaped', body: 'x' },
    ],
    'bzip2',
  );
  const answer = await upload(site, archive);
  assert.equal(answer.status, 422);
  assert.equal(answer.body.error, 'ERR_UNSAFE_ARCHIVE');
  assert.match(answer.body.message ?? '', /entry "a\/b\/up" refused: symlink to "\.\.\/\.\.\/\.\." points outside/);
  await assert.rejects(readFile(path.join(site.custom, 'packages.checksum')), { code: 'ENOENT' });
});
