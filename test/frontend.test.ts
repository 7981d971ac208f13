import assert from 'node:assert/strict';
import { access, copyFile, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { CreateBucketCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { chromium, type Browser, type Page } from 'playwright-core';
import { loadConfig } from '../src/config/index.js';
import { uploadPackages } from '../src/packager/index.js';
import { buildServer } from '../src/server/index.js';
import { startNginx } from './fixtures/nginx.js';
import { runChecked } from './fixtures/process.js';
import { adminClient, awsEnv, startRadosgw } from './fixtures/radosgw.js';
import { copyExampleTree, ROOT, tempDir } from './helpers.js';

const TOKEN = 'test-token-123456';
const CUSTOM_FILE = 'test-mycustom.tar.bz2';
const WAIT = { timeout: 15_000 };
const SHOTS = path.join(ROOT, 'test-artifacts', 'frontend');
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

interface Site {
  url: string;
  builtin: string;
  custom: string;
  staging: string;
  /** A valid custom test tarball, named as the browser uploads it. */
  upload: string;
}

/** Publishes the example tree into builtin, then serves builtin and custom with an upload token. */
async function startSite(t: TestContext): Promise<Site> {
  const dir = await tempDir(t, 'autotest-frontend-');
  const clientDir = await copyExampleTree(dir);
  const builtin = path.join(dir, 'builtin');
  const custom = path.join(dir, 'custom');
  const staging = path.join(dir, 'staging');
  const cacheDir = path.join(dir, 'cache');
  const published = await uploadPackages({
    clientDir,
    selection: { all: true, tests: [], profilers: [], deps: [], client: false, files: [] },
    locations: [{ kind: 'local', path: builtin, text: builtin }],
    compression: 'bzip2',
    minimumFreeBytes: 0,
    cacheDir,
  });
  assert.equal(published.ok, true);

  // The tarball of tests/hello, under another name: the file name decides type and name.
  const uploadDir = path.join(dir, 'to-upload');
  await mkdir(uploadDir);
  const upload = path.join(uploadDir, CUSTOM_FILE);
  await copyFile(path.join(builtin, 'test-hello.tar.bz2'), upload);

  const file = path.join(dir, 'global_config.ini');
  await writeFile(
    file,
    [
      '[PACKAGES]',
      `upload_location: ${builtin}`,
      `custom_upload_location: ${custom}`,
      `custom_download_location: ${staging}`,
      'minimum_free_space: 0',
      `client_dir: ${clientDir}`,
      '[SERVER]',
      `upload_token: ${TOKEN}`,
      '',
    ].join('\n'),
  );
  const config = await loadConfig({ file, env: {} });
  const app = await buildServer({ config, logLevel: 'silent', cacheDir });
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => app.close());
  return { url, builtin, custom, staging, upload };
}

async function launch(t: TestContext): Promise<Browser> {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS, timeout: 30_000 });
  t.after(() => browser.close());
  return browser;
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

async function exists(file: string): Promise<boolean> {
  return access(file).then(
    () => true,
    () => false,
  );
}

/** File names listed in a repository folder's packages.checksum. */
async function checksumNames(dir: string): Promise<string[]> {
  const text = await readFile(path.join(dir, 'packages.checksum'), 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => line.trim().split(/\s+/).at(-1) ?? '');
}

const row = (repository: string, file: string): string => `table.packages[data-repository="${repository}"] tr[data-file="${file}"]`;

test('the web frontend lists, filters, uploads, deletes and checks packages in a real browser', async (t) => {
  await mkdir(SHOTS, { recursive: true });
  const site = await startSite(t);
  const browser = await launch(t);
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.setDefaultTimeout(WAIT.timeout);
  const pageErrors: string[] = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));

  await t.test('the packages page lists the published example packages and the filter hides non-matching rows', async () => {
    await page.goto(site.url + '/');
    for (const file of ['test-sleeptest.tar.bz2', 'test-dbench.tar.bz2', 'dep-libaio.tar.bz2', 'client-autotest.tar.bz2']) {
      await page.locator(row('builtin', file)).waitFor(WAIT);
    }
    assert.match(await page.locator(row('builtin', 'test-dbench.tar.bz2')).innerText(), /test\s+dbench/);
    assert.equal(await page.locator('table.packages[data-repository="custom"] tr.empty').count(), 1);
    await shot(page, '01-packages');

    await page.fill('#filter', 'dbench');
    await page.locator(row('builtin', 'test-sleeptest.tar.bz2')).waitFor({ ...WAIT, state: 'hidden' });
    assert.equal(await page.locator(row('builtin', 'test-dbench.tar.bz2')).isVisible(), true);
    assert.equal(await page.locator(row('builtin', 'dep-libaio.tar.bz2')).isVisible(), false);
    assert.equal(await page.locator(row('builtin', 'client-autotest.tar.bz2')).isVisible(), false);
    await shot(page, '02-filtered');
    await page.fill('#filter', '');
    await page.locator(row('builtin', 'test-sleeptest.tar.bz2')).waitFor({ ...WAIT, state: 'visible' });
  });

  await t.test('an upload with a wrong token fails with 401 and stores nothing', async () => {
    await page.setInputFiles('#file', site.upload);
    await page.fill('#token', 'wrong-token-000000');
    await page.click('#upload button[type=submit]');
    await page.waitForFunction(() => /failed/.test(document.getElementById('status')?.textContent ?? ''), undefined, WAIT);
    const status = await page.locator('#status').innerText();
    assert.match(status, /401/);
    await shot(page, '03-upload-refused');
    assert.equal(await exists(path.join(site.custom, CUSTOM_FILE)), false);
    assert.deepEqual(await checksumNames(site.custom), []);
    assert.deepEqual(
      (await readdir(site.staging).catch(() => [])).filter((name) => !name.startsWith('.')),
      [],
    );
  });

  await t.test('an upload through the form publishes the custom test and the page shows it', async () => {
    await page.setInputFiles('#file', site.upload);
    await page.fill('#token', TOKEN);
    await page.click('#upload button[type=submit]');
    await page.locator(row('custom', CUSTOM_FILE)).waitFor(WAIT);
    assert.match(await page.locator(row('custom', CUSTOM_FILE)).innerText(), /test\s+mycustom/);
    await shot(page, '04-uploaded');
    assert.equal(await exists(path.join(site.custom, CUSTOM_FILE)), true);
    assert.deepEqual(await checksumNames(site.custom), [CUSTOM_FILE]);
  });

  await t.test('deleting the custom test after confirming removes its row, its file and its index entry', async () => {
    const dialogs: string[] = [];
    page.once('dialog', (dialog) => {
      dialogs.push(dialog.message());
      void dialog.accept();
    });
    await page.click(`${row('custom', CUSTOM_FILE)} button.delete`);
    await page.locator('table.packages[data-repository="custom"] tr.empty').waitFor(WAIT);
    assert.equal(await page.locator(row('custom', CUSTOM_FILE)).count(), 0);
    assert.match(dialogs[0] ?? '', /Delete test-mycustom\.tar\.bz2/);
    await shot(page, '05-deleted');
    assert.equal(await exists(path.join(site.custom, CUSTOM_FILE)), false);
    assert.deepEqual(await checksumNames(site.custom), []);
  });

  await t.test('the consistency view names a builtin package deleted behind the server', async () => {
    await rm(path.join(site.builtin, 'test-dbench.tar.bz2'));
    await page.goto(site.url + '/consistency');
    const builtin = page.locator(`section.location[data-location="${site.builtin}"]`);
    await builtin.waitFor(WAIT);
    assert.match(await builtin.locator('p').first().innerText(), /1 problem\(s\)/);
    const problems = await builtin.locator('tr.problem').allInnerTexts();
    assert.equal(problems.length, 1);
    assert.match(problems[0] ?? '', /missing\s+test-dbench\.tar\.bz2/);
    const customSection = page.locator(`section.location[data-location="${site.custom}"]`);
    assert.match(await customSection.innerText(), /consistent/);
    await shot(page, '06-consistency');
  });

  assert.deepEqual(pageErrors, []);
});

test('the web frontend uploads a custom test to an S3 custom location, lists it from there and deletes it, in a real browser', async (t) => {
  await mkdir(SHOTS, { recursive: true });
  const s3 = await startRadosgw();
  t.after(() => s3.stop());
  // The server runs in this process and takes its keys from the SDK chain, as in a lab: the
  // environment gets them for this test and is put back after it.
  const saved = { ...process.env };
  t.after(() => {
    for (const key of Object.keys(process.env)) if (!(key in saved)) Reflect.deleteProperty(process.env, key);
    Object.assign(process.env, saved);
  });
  Object.assign(process.env, awsEnv(s3));
  delete process.env.AWS_PROFILE;
  const admin = adminClient(s3);
  t.after(() => {
    admin.destroy();
  });
  await admin.send(new CreateBucketCommand({ Bucket: 'lab-packages' }));
  const objectNames = async (): Promise<string[]> =>
    ((await admin.send(new ListObjectsV2Command({ Bucket: 'lab-packages', Prefix: 'custom/' }))).Contents ?? []).map((object) => object.Key ?? '').sort();

  const dir = await tempDir(t, 'autotest-frontend-s3-');
  const tree = path.join(dir, 'mine');
  await mkdir(tree);
  await writeFile(path.join(tree, 'control'), 'export async function run() { return {}; }\n');
  const upload = path.join(dir, CUSTOM_FILE);
  await runChecked('tar', ['-cjf', upload, '-C', tree, '.']);
  const file = path.join(dir, 'global_config.ini');
  await writeFile(
    file,
    [
      '[PACKAGES]',
      'custom_upload_location: s3://lab-packages/custom',
      `custom_download_location: ${path.join(dir, 'staging')}`,
      'minimum_free_space: 0',
      '[S3]',
      `endpoint: ${s3.endpoint}`,
      'path_style: true',
      'checksum_mode: when_required',
      '[SERVER]',
      `upload_token: ${TOKEN}`,
      `cache_dir: ${path.join(dir, 'front-cache')}`,
      '',
    ].join('\n'),
  );
  const app = await buildServer({ config: await loadConfig({ file, env: {} }), logLevel: 'silent', cacheDir: path.join(dir, 'cache') });
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => app.close());

  const browser = await launch(t);
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.setDefaultTimeout(WAIT.timeout);
  const pageErrors: string[] = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));
  await page.goto(`${url}/`);
  await page.locator('table.packages[data-repository="custom"] tr.empty').waitFor(WAIT);
  await page.setInputFiles('#file', upload);
  await page.fill('#token', TOKEN);
  await page.click('#upload button[type=submit]');
  await page.locator(row('custom', CUSTOM_FILE)).waitFor(WAIT);
  await shot(page, '07-s3-uploaded');
  assert.deepEqual(await objectNames(), ['custom/packages.checksum', 'custom/packages.json', `custom/${CUSTOM_FILE}`]);
  await page.reload();
  await page.locator(row('custom', CUSTOM_FILE)).waitFor(WAIT);

  page.once('dialog', (dialog) => {
    void dialog.accept();
  });
  await page.click(`${row('custom', CUSTOM_FILE)} button.delete`);
  await page.locator('table.packages[data-repository="custom"] tr.empty').waitFor(WAIT);
  assert.deepEqual(await objectNames(), ['custom/packages.checksum', 'custom/packages.json']);
  await shot(page, '08-s3-deleted');
  assert.deepEqual(pageErrors, []);
});

test("the web frontend shows a caching front's entries, hit ratio and a chart of bytes served against bytes fetched upstream, in a real browser", async (t) => {
  await mkdir(SHOTS, { recursive: true });
  const dir = await tempDir(t, 'autotest-frontend-');
  const clientDir = await copyExampleTree(dir);
  const upstreamDir = path.join(dir, 'upstream');
  const published = await uploadPackages({
    clientDir,
    selection: { all: false, tests: ['hello'], profilers: [], deps: [], client: false, files: [] },
    locations: [{ kind: 'local', path: upstreamDir, text: upstreamDir }],
    compression: 'bzip2',
    minimumFreeBytes: 0,
    cacheDir: path.join(dir, 'cache'),
  });
  assert.equal(published.ok, true);
  const nginx = await startNginx({ root: upstreamDir });
  t.after(() => nginx.stop());
  const file = path.join(dir, 'global_config.ini');
  await writeFile(file, ['[SERVER]', `builtin_dir: ${nginx.url}`, `cache_dir: ${path.join(dir, 'front-cache')}`, ''].join('\n'));
  const app = await buildServer({ config: await loadConfig({ file, env: {} }), logLevel: 'silent', cacheDir: path.join(dir, 'cache') });
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => app.close());
  // One miss, then one hit: the upstream gave the package once, the front served it twice.
  const size = (await readFile(path.join(upstreamDir, 'test-hello.tar.bz2'))).length;
  for (const expected of ['miss', 'hit']) {
    const answer = await fetch(`${url}/packages/builtin/test-hello.tar.bz2`);
    assert.equal(answer.headers.get('x-autotest-cache'), expected);
    assert.equal((await answer.arrayBuffer()).byteLength, size);
  }

  const browser = await launch(t);
  const page = await browser.newPage();
  await page.goto(`${url}/`, WAIT);
  const cache = page.locator('#repo-builtin ~ .cache').first();
  assert.equal(await cache.locator('.hit-ratio').textContent(), '50%');
  assert.match((await cache.locator('.entries').textContent()) ?? '', /^1 package, /);
  const chart = page.locator('svg.traffic-chart');
  assert.equal(await chart.isVisible(), true);
  // The last point of each line: served (twice the package) stands higher than fetched (once).
  const lastY = async (series: string): Promise<number> =>
    Number((await chart.locator(`polyline.${series}`).getAttribute('points'))?.trim().split(' ').at(-1)?.split(',')[1]);
  assert.ok((await lastY('served')) < (await lastY('upstream')), 'the served line ends above the upstream line');
  assert.match((await page.locator('.traffic').textContent()) ?? '', /50% of the bytes served came from the cache/);
  await shot(page, 'cache-panel');
});
