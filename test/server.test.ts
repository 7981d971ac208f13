import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile, readdir, stat, writeFile, mkdir, access } from 'node:fs/promises';
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { Writable } from 'node:stream';
import { test, type TestContext } from 'node:test';
import { installPackages } from '../src/client/install.js';
import { loadConfig, type Location } from '../src/config/index.js';
import { uploadPackages } from '../src/packager/index.js';
import type { FastifyInstance } from 'fastify';
import { AutotestError, ERROR_CODES, type ErrorCode } from '../src/errors.js';
import { buildServer } from '../src/server/index.js';
import { startNginx } from './fixtures/nginx.js';
import { startDaemon } from './fixtures/process.js';
import { startSshd } from './fixtures/sshd.js';
import { MAX_PACKAGE_NAME_LENGTH } from '../src/packages/index.js';
import { CLI, checkConsistency, copyExampleTree, mountTmpfs, runCli, tempDir } from './helpers.js';

const TOKEN = 'test-token-0123456789';

interface Site {
  dir: string;
  url: string;
  builtin: string;
  custom: string;
  staging: string;
  clientDir: string;
}

function local(p: string): Location {
  return { kind: 'local', path: p, text: p };
}

/** Writes a config with [PACKAGES] and [SERVER], publishes the example tree, starts the server in this process. */
async function startSite(
  t: TestContext,
  extra: { customLocations?: string; server?: Record<string, string>; staging?: string; routes?: (app: FastifyInstance) => void } = {},
): Promise<Site> {
  const dir = await tempDir(t);
  const clientDir = await copyExampleTree(dir);
  const builtin = path.join(dir, 'www', 'builtin');
  const custom = path.join(dir, 'www', 'custom');
  const staging = extra.staging ?? path.join(dir, 'staging');
  const serverKeys = { upload_token: TOKEN, max_upload_size: '1', ...extra.server };
  await writeFile(
    path.join(dir, 'global_config.ini'),
    [
      '[PACKAGES]',
      `upload_location: ${builtin}`,
      `custom_upload_location: ${extra.customLocations ?? custom}`,
      `custom_download_location: ${staging}`,
      'minimum_free_space: 0',
      `client_dir: ${clientDir}`,
      '[SERVER]',
      ...Object.entries(serverKeys).map(([k, v]) => `${k}: ${v}`),
      '',
    ].join('\n'),
  );
  const report = await uploadPackages({
    clientDir,
    selection: { all: true, tests: [], profilers: [], deps: [], client: false, files: [] },
    locations: [local(builtin)],
    compression: 'bzip2',
    minimumFreeBytes: 0,
    cacheDir: path.join(dir, 'cache'),
  });
  assert.equal(report.ok, true);
  const config = await loadConfig({ file: path.join(dir, 'global_config.ini'), env: {} });
  const app = await buildServer({ config, logLevel: 'silent', cacheDir: path.join(dir, 'cache') });
  extra.routes?.(app);
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => app.close());
  return { dir, url, builtin, custom, staging, clientDir };
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** One request with the path sent exactly as given (no normalisation by a client library). */
function request(url: string, rawPath: string, options: { method?: string; headers?: Record<string, string>; body?: Buffer } = {}): Promise<Answer> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: hostname, port, path: rawPath, method: options.method ?? 'GET', headers: options.headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  );
}

test('serves packages with Range (single, open-ended, unsatisfiable), conditional requests, HEAD, listings and content types', async (t) => {
  const site = await startSite(t);
  const file = '/packages/builtin/test-dbench.tar.bz2';
  const bytes = await readFile(path.join(site.builtin, 'test-dbench.tar.bz2'));

  const full = await request(site.url, file);
  assert.equal(full.status, 200);
  assert.deepEqual(full.body, bytes);
  assert.equal(full.headers['content-type'], 'application/x-bzip2');
  assert.equal(full.headers['accept-ranges'], 'bytes');

  const single = await request(site.url, file, { headers: { range: 'bytes=10-19' } });
  assert.equal(single.status, 206);
  assert.equal(single.headers['content-range'], `bytes 10-19/${bytes.length.toString()}`);
  assert.deepEqual(single.body, bytes.subarray(10, 20));
  const open = await request(site.url, file, { headers: { range: 'bytes=100-' } });
  assert.equal(open.status, 206);
  assert.deepEqual(open.body, bytes.subarray(100));
  const unsatisfiable = await request(site.url, file, { headers: { range: `bytes=${(bytes.length + 10).toString()}-` } });
  assert.equal(unsatisfiable.status, 416);
  assert.equal(unsatisfiable.headers['content-range'], `bytes */${bytes.length.toString()}`);

  const etag = full.headers.etag ?? '';
  assert.notEqual(etag, '');
  assert.equal((await request(site.url, file, { headers: { 'if-none-match': etag } })).status, 304);
  assert.equal((await request(site.url, file, { headers: { 'if-modified-since': full.headers['last-modified'] ?? '' } })).status, 304);
  assert.equal((await request(site.url, file, { headers: { 'if-none-match': '"other"' } })).status, 200);

  const head = await request(site.url, file, { method: 'HEAD' });
  assert.equal(head.status, 200);
  assert.equal(head.headers['content-length'], bytes.length.toString());
  assert.equal(head.body.length, 0);

  const checksum = await request(site.url, '/packages/builtin/packages.checksum');
  assert.match(checksum.headers['content-type'] ?? '', /^text\/plain/);
  assert.equal(checksum.body.toString(), await readFile(path.join(site.builtin, 'packages.checksum'), 'utf8'));

  const listing = await request(site.url, '/packages/builtin/');
  assert.equal(listing.status, 200);
  assert.match(listing.headers['content-type'] ?? '', /^text\/html/);
  for (const name of await readdir(site.builtin)) {
    if (name.startsWith('.')) assert.doesNotMatch(listing.body.toString(), new RegExp(name.replace(/\./g, '\\.')), 'dotfiles are not listed');
    else assert.match(listing.body.toString(), new RegExp(`href="${name.replace(/\./g, '\\.')}"`));
  }
  const health = await request(site.url, '/healthz');
  assert.deepEqual(JSON.parse(health.body.toString()), { status: 'ok' });
  const metrics = (await request(site.url, '/metrics')).body.toString();
  assert.match(metrics, /autotest_http_requests_total\{method="GET",route="\/packages\/builtin\/\*",status="206"\} 2/);
  assert.match(metrics, /autotest_http_response_bytes_total \d+/);
  assert.match(metrics, /autotest_http_request_duration_seconds_bucket/);
});

test('no URL, however encoded, serves a file outside the served folders', async (t) => {
  const site = await startSite(t);
  const secret = 'SECRET-OUTSIDE-THE-REPOSITORIES';
  await writeFile(path.join(site.dir, 'www', 'secret.txt'), secret);
  await writeFile(path.join(site.dir, 'secret.txt'), secret);
  await writeFile(path.join(site.builtin, '.hidden'), secret);
  const attempts = [
    '/packages/builtin/../secret.txt',
    '/packages/builtin/../../secret.txt',
    '/packages/builtin/%2e%2e/secret.txt',
    '/packages/builtin/%2e%2e/%2e%2e/secret.txt',
    '/packages/builtin/..%2fsecret.txt',
    '/packages/builtin/%2e%2e%2fsecret.txt',
    '/packages/builtin/..%5csecret.txt',
    '/packages/builtin//' + path.join(site.dir, 'secret.txt'),
    '/packages/builtin/%2F' + path.join(site.dir, 'secret.txt').slice(1),
    '/packages/custom/../builtin/../secret.txt',
    '/packages/builtin/.hidden',
    '/packages/builtin/%2ehidden',
    path.join(site.dir, 'secret.txt'),
    '//etc/passwd',
    '/packages/builtin/../../../../../../etc/passwd',
    '/packages/builtin/%252e%252e/secret.txt',
    '/packages/builtin/%00/../secret.txt',
  ];
  for (const attempt of attempts) {
    const answer = await request(site.url, attempt);
    assert.ok(answer.status >= 400, `${attempt}: ${answer.status.toString()}`);
    assert.ok(!answer.body.toString().includes(secret), `${attempt} served a file outside`);
    assert.ok(!answer.body.toString().includes('root:x:0'), `${attempt} served /etc/passwd`);
  }
});

test('a folder URL without its slash answers 301 to the folder, keeping the query, for GET and HEAD; files, missing paths and other hosts are not redirected', async (t) => {
  const site = await startSite(t);
  const get = await request(site.url, '/packages/builtin');
  assert.equal(get.status, 301);
  assert.equal(get.headers.location, '/packages/builtin/');
  const head = await request(site.url, '/packages/custom?C=M;O=A', { method: 'HEAD' });
  assert.equal(head.status, 301);
  assert.equal(head.headers.location, '/packages/custom/?C=M;O=A');
  assert.equal(head.body.length, 0);

  assert.equal((await request(site.url, '/packages/builtin/test-dbench.tar.bz2')).status, 200, 'a file stays a file');
  for (const notAFolder of ['/packages/builtin/test-dbench.tar.bz2/', '/packages/builtin/nosuch', '/packages/nosuch', '/packages/builtinx']) {
    const answer = await request(site.url, notAFolder);
    assert.equal(answer.status, 404, notAFolder);
    assert.equal(answer.headers.location, undefined, notAFolder);
  }
  const elsewhere = [
    '//evil.example',
    '//evil.example/packages/builtin',
    '/packages//evil.example',
    '/packages/builtin//evil.example',
    '/\\evil.example/packages/builtin',
    '/packages/builtin/..//evil.example',
    '/%2F%2Fevil.example/packages/builtin',
    '/packages/builtin?//evil.example',
  ];
  for (const attempt of elsewhere) {
    const location = (await request(site.url, attempt)).headers.location;
    if (location === undefined) continue;
    assert.ok(location.startsWith('/packages/') && !location.startsWith('//'), `${attempt} redirected to ${location}`);
  }
});

test("wget probing /packages/builtin without a slash, as Autotest's HTTP fetcher does, succeeds", async (t) => {
  const site = await startSite(t);
  const out = path.join(site.dir, 'probe');
  // Exactly the probe of Autotest's HttpFetcher, at the seed's fetch_location.
  const url = `${site.url.replace(/\/$/, '')}/packages/builtin`;
  const probe = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
    const child = spawn('wget', ['--connect-timeout=15', '-nv', url, '-O', out], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => {
      resolve({ code, stderr });
    });
  });
  assert.equal(probe.code, 0, probe.stderr);
  const listing = await readFile(out, 'utf8');
  assert.match(listing, /Index of \/packages\/builtin\//);
  assert.match(listing, /href="test-dbench\.tar\.bz2"/);
});

test('a suffix range longer than the file gets the whole file and a range of another unit is ignored, as nginx answers them', async (t) => {
  const site = await startSite(t);
  const nginx = await startNginx({ root: site.dir, extraLocations: `location /packages/ { alias ${path.join(site.dir, 'www')}/; }` });
  t.after(() => nginx.stop());
  const file = '/packages/builtin/test-dbench.tar.bz2';
  const bytes = await readFile(path.join(site.builtin, 'test-dbench.tar.bz2'));
  for (const base of [site.url, nginx.url]) {
    const suffix = await request(base, file, { headers: { range: 'bytes=-100000000' } });
    assert.equal(suffix.status, 206, base);
    assert.equal(suffix.headers['content-range'], `bytes 0-${(bytes.length - 1).toString()}/${bytes.length.toString()}`, base);
    assert.deepEqual(suffix.body, bytes, base);
    const tail = await request(base, file, { headers: { range: 'bytes=-10' } });
    assert.deepEqual(tail.body, bytes.subarray(-10), base);
    const items = await request(base, file, { headers: { range: 'items=0-1' } });
    assert.equal(items.status, 200, base);
    assert.equal(items.headers['content-range'], undefined, base);
    assert.deepEqual(items.body, bytes, base);
  }
});

test('the client installs packages from this server and from nginx serving the same folders', async (t) => {
  const site = await startSite(t);
  // As the README's nginx example: /packages/ aliased to the folder that holds builtin/ and custom/.
  const nginx = await startNginx({ root: site.dir, extraLocations: `location /packages/ { alias ${path.join(site.dir, 'www')}/; autoindex on; }` });
  t.after(() => nginx.stop());
  const settings = { connectTimeoutMs: 2000, timeoutMs: 10_000, retries: 1, cooldownMs: 0, maxSizeBytes: 1e9 };
  for (const [name, base] of [
    ['ours', site.url],
    ['nginx', nginx.url],
  ] as const) {
    const url = `${base.replace(/\/$/, '')}/packages/builtin`;
    const records = await installPackages('test', ['sleeptest', 'dbench'], {
      locations: [{ kind: 'http', url, text: url }],
      settings,
      installDir: path.join(site.dir, `install-${name}`),
    });
    assert.deepEqual(
      records.map((r) => [r.action, r.repository]),
      [
        ['fetched', url],
        ['fetched', url],
      ],
      name,
    );
    assert.equal(await exists(path.join(site.dir, `install-${name}`, 'tests', 'dbench', 'dbench.mjs')), true);
  }
});

async function customTarball(site: Site, name: string): Promise<string> {
  const scratch = path.join(site.dir, 'scratch');
  const report = await uploadPackages({
    clientDir: site.clientDir,
    selection: { all: false, tests: ['hello'], profilers: [], deps: [], client: false, files: [] },
    locations: [local(scratch)],
    compression: 'bzip2',
    minimumFreeBytes: 0,
    cacheDir: path.join(site.dir, 'cache'),
  });
  assert.equal(report.ok, true);
  const file = path.join(site.dir, name);
  await writeFile(file, await readFile(path.join(scratch, 'test-hello.tar.bz2')));
  return file;
}

test('uploads need the token: without one or with a wrong one the answer is 401 and nothing is stored', async (t) => {
  const site = await startSite(t);
  const body = await readFile(await customTarball(site, 'test-mine.tar.bz2'));
  const attempts: Record<string, string>[] = [{}, { authorization: 'Bearer wrong-token-000' }, { authorization: TOKEN }];
  for (const headers of attempts) {
    const answer = await request(site.url, '/api/custom/test-mine.tar.bz2', { method: 'PUT', headers, body });
    assert.equal(answer.status, 401);
    assert.ok(!answer.body.toString().includes(TOKEN), 'the token is never echoed');
  }
  assert.equal((await request(site.url, '/api/custom/test-hello.tar.bz2', { method: 'DELETE' })).status, 401);
  assert.equal(await exists(path.join(site.custom, 'test-mine.tar.bz2')), false);
  assert.deepEqual(await readdir(site.custom), []);
  assert.equal(await exists(site.staging), false);
});

test('a package name as long as the index can hold uploads and deletes through the API, one character more is refused naming the limit, and the packager refuses it before writing', async (t) => {
  const site = await startSite(t);
  const auth = { authorization: `Bearer ${TOKEN}` };
  const longest = `test-${'n'.repeat(MAX_PACKAGE_NAME_LENGTH)}.tar.bz2`;
  const body = await readFile(await customTarball(site, 'long.tar.bz2'));
  const put = await request(site.url, `/api/custom/${longest}`, { method: 'PUT', headers: auth, body });
  assert.equal(put.status, 200, put.body.toString());
  assert.deepEqual((await checkConsistency(site.custom)).problems, []);
  const listed = await request(site.url, '/api/packages');
  assert.match(listed.body.toString(), new RegExp(longest.replaceAll('.', '\\.')));
  assert.equal((await request(site.url, `/api/custom/${longest}`, { method: 'DELETE', headers: auth })).status, 200);
  assert.equal(await exists(path.join(site.custom, longest)), false);

  const tooLong = `test-${'n'.repeat(MAX_PACKAGE_NAME_LENGTH + 1)}.tar.bz2`;
  const refused = await request(site.url, `/api/custom/${tooLong}`, { method: 'PUT', headers: auth, body });
  assert.equal(refused.status, 400);
  assert.match(refused.body.toString(), new RegExp(`at most ${MAX_PACKAGE_NAME_LENGTH.toString()}`));

  const name = 'n'.repeat(MAX_PACKAGE_NAME_LENGTH + 1);
  await mkdir(path.join(site.clientDir, 'tests', name));
  await writeFile(path.join(site.clientDir, 'tests', name, 'control'), 'x');
  const before = await readFile(path.join(site.builtin, 'packages.checksum'), 'utf8');
  const packager = await runCli(['packager', 'upload', '-t', name, '--config', path.join(site.dir, 'global_config.ini')], { cwd: site.dir });
  assert.notEqual(packager.code, 0);
  assert.match(packager.stderr, new RegExp(`at most ${MAX_PACKAGE_NAME_LENGTH.toString()} are allowed`));
  assert.equal(await readFile(path.join(site.builtin, 'packages.checksum'), 'utf8'), before, 'the index is untouched');
});

test('an oversized upload is refused with 413, an unsafe archive names its entry, a bad checksum or name is refused, and nothing is stored', async (t) => {
  const site = await startSite(t);
  const auth = { authorization: `Bearer ${TOKEN}` };
  const big = Buffer.alloc(1_200_000, 1);
  const oversized = await request(site.url, '/api/custom/kernel.img', { method: 'PUT', headers: auth, body: big });
  assert.equal(oversized.status, 413);
  assert.match(oversized.body.toString(), /max_upload_size/);

  const { default: tar } = await import('tar-stream');
  const { createGzip } = await import('node:zlib');
  const { pipeline } = await import('node:stream/promises');
  const { createWriteStream } = await import('node:fs');
  const evil = path.join(site.dir, 'test-evil.tar.gz');
  const pack = tar.pack();
  const done = pipeline(pack, createGzip(), createWriteStream(evil));
  pack.entry({ name: '../../escape.txt', mode: 0o644 }, 'x');
  pack.finalize();
  await done;
  const unsafe = await request(site.url, '/api/custom/test-evil.tar.gz', { method: 'PUT', headers: auth, body: await readFile(evil) });
  assert.equal(unsafe.status, 422);
  assert.match((JSON.parse(unsafe.body.toString()) as { message: string }).message, /entry "\.\.\/\.\.\/escape\.txt" refused/);

  const mismatch = await request(site.url, '/api/custom/kernel.img', {
    method: 'PUT',
    headers: { ...auth, 'x-checksum-sha256': '0'.repeat(64) },
    body: Buffer.from('kernel'),
  });
  assert.equal(mismatch.status, 422);
  for (const name of ['packages.checksum', '.hidden', 'a%20b;rm', 'client-autotest.tar.bz2']) {
    const bad = await request(site.url, `/api/custom/${name}`, { method: 'PUT', headers: auth, body: Buffer.from('x') });
    assert.equal(bad.status, 400, name);
  }
  assert.deepEqual(await readdir(site.custom), []);
  assert.deepEqual(await readdir(site.staging).catch(() => []), [], 'no staging left behind');
  assert.equal(await exists(path.join(site.dir, 'escape.txt')), false);
  const metrics = (await request(site.url, '/metrics')).body.toString();
  assert.match(metrics, /autotest_uploads_total\{outcome="refused"\} 7/);
});

test('a valid custom test is published to every custom location, one of them over SSH, and listed in their indexes; delete takes it out of them', async (t) => {
  const sshd = await startSshd();
  t.after(() => sshd.stop());
  const previous = process.env.AUTOTEST_SSH_CONFIG;
  process.env.AUTOTEST_SSH_CONFIG = sshd.configFile;
  t.after(() => {
    process.env.AUTOTEST_SSH_CONFIG = previous;
  });
  const remote = path.join(await tempDir(t), 'remote-custom');
  const placeholder = await tempDir(t);
  const site = await startSite(t, { customLocations: `${path.join(placeholder, 'custom')}, ssh://${sshd.alias}${remote}` });
  const tarball = await readFile(await customTarball(site, 'test-mine.tar.bz2'));
  const sha256 = createHash('sha256').update(tarball).digest('hex');
  const answer = await request(site.url, '/api/custom/test-mine.tar.bz2', {
    method: 'PUT',
    headers: { authorization: `Bearer ${TOKEN}`, 'x-checksum-sha256': sha256 },
    body: tarball,
  });
  assert.equal(answer.status, 200, answer.body.toString());
  const result = JSON.parse(answer.body.toString()) as { sha256: string; locations: { location: string; published: string[] }[] };
  assert.equal(result.sha256, sha256);
  assert.deepEqual(
    result.locations.map((l) => l.published),
    [['test-mine.tar.bz2'], ['test-mine.tar.bz2']],
  );
  for (const folder of [path.join(placeholder, 'custom'), remote]) {
    const consistency = await checkConsistency(folder);
    assert.equal(consistency.entries, 1, folder);
    assert.deepEqual(consistency.problems, []);
    assert.match(await readFile(path.join(folder, 'packages.checksum'), 'utf8'), /test-mine\.tar\.bz2/);
  }
  const removed = await request(site.url, '/api/custom/test-mine.tar.bz2', { method: 'DELETE', headers: { authorization: `Bearer ${TOKEN}` } });
  assert.equal(removed.status, 200, removed.body.toString());
  for (const folder of [path.join(placeholder, 'custom'), remote]) {
    assert.equal(await exists(path.join(folder, 'test-mine.tar.bz2')), false);
    assert.doesNotMatch(await readFile(path.join(folder, 'packages.checksum'), 'utf8'), /test-mine/);
  }
  // Deleted already: no location holds it any more, which is a 404 listing it missing everywhere.
  const again = await request(site.url, '/api/custom/test-mine.tar.bz2', { method: 'DELETE', headers: { authorization: `Bearer ${TOKEN}` } });
  assert.equal(again.status, 404, again.body.toString());
  const body = JSON.parse(again.body.toString()) as { locations: { missing: string[] }[] };
  assert.deepEqual(
    body.locations.map((l) => l.missing),
    [['test-mine.tar.bz2'], ['test-mine.tar.bz2']],
  );
});

test('a client that disconnects in the middle of an upload leaves nothing behind', async (t) => {
  const site = await startSite(t, { server: { max_upload_size: '100' } });
  const { hostname, port } = new URL(site.url);
  await new Promise<void>((resolve) => {
    const req = http.request({
      host: hostname,
      port,
      path: '/api/custom/kernel-big.img',
      method: 'PUT',
      agent: false,
      headers: { authorization: `Bearer ${TOKEN}`, 'content-length': (50_000_000).toString() },
    });
    req.on('error', () => {
      resolve();
    });
    req.write(Buffer.alloc(4_000_000, 3), () => {
      setTimeout(() => {
        req.destroy();
        resolve();
      }, 200);
    });
  });
  // The server notices the cut and cleans up; poll, bounded.
  for (let i = 0; i < 50 && (await readdir(site.staging).catch(() => [])).length > 0; i += 1) await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(await readdir(site.staging).catch(() => []), []);
  assert.deepEqual(await readdir(site.custom), []);
});

test('200 concurrent downloads of a large package get correct bytes while the server memory stays bounded', async (t) => {
  const dir = await tempDir(t);
  const www = path.join(dir, 'builtin');
  await mkdir(www, { recursive: true });
  const big = Buffer.alloc(16 * 1024 * 1024);
  for (let i = 0; i < big.length; i += 4096) big.writeUInt32LE(i, i);
  await writeFile(path.join(www, 'kernel-16m.img'), big);
  const expected = createHash('sha256').update(big).digest('hex');
  await writeFile(
    path.join(dir, 'global_config.ini'),
    `[PACKAGES]\nupload_location: ${www}\ncustom_upload_location: ${path.join(dir, 'custom')}\n[SERVER]\nport: 0\n`,
  );
  const server = spawn(process.execPath, [CLI, 'serve', '--config', path.join(dir, 'global_config.ini')], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.after(() => {
    server.kill('SIGKILL');
  });
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    server.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk;
      const match = /at (http:\/\/[^/\s]+)\/packages\/builtin\//.exec(out);
      if (match?.[1]) resolve(match[1]);
    });
    server.on('exit', () => {
      reject(new Error(`the server exited: ${out}`));
    });
  });
  const agent = new http.Agent({ maxSockets: 200 });
  t.after(() => {
    agent.destroy();
  });
  const digests = await Promise.all(
    Array.from(
      { length: 200 },
      () =>
        new Promise<string>((resolve, reject) => {
          http
            .get(`${url}/packages/builtin/kernel-16m.img`, { agent }, (res) => {
              const hash = createHash('sha256');
              res.on('data', (c: Buffer) => hash.update(c));
              res.on('end', () => {
                resolve(hash.digest('hex'));
              });
              res.on('error', reject);
            })
            .on('error', reject);
        }),
    ),
  );
  assert.equal(digests.filter((d) => d === expected).length, 200);
  const status = await readFile(`/proc/${String(server.pid)}/status`, 'utf8');
  const peakKb = Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1]);
  // 200 clients x 16 MB = 3.2 GB sent; a server that buffered files would hold gigabytes.
  assert.ok(peakKb > 0 && peakKb < 300 * 1024, `peak RSS ${(peakKb / 1024).toFixed(0)} MB`);
  console.log(`peak RSS with 200 downloads: ${(peakKb / 1024).toFixed(0)} MB`);
  assert.equal((await stat(path.join(www, 'kernel-16m.img'))).size, big.length);
});

/** Sends one raw request on `socket` and resolves with the response head. */
function rawRequest(socket: net.Socket, requestPath: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let head = '';
    const onData = (chunk: Buffer): void => {
      head += chunk.toString('latin1');
      const end = head.indexOf('\r\n\r\n');
      if (end >= 0) {
        socket.off('data', onData);
        resolve(head.slice(0, end));
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.write(`GET ${requestPath} HTTP/1.1\r\nHost: test\r\n\r\n`);
  });
}

const FD_LIMIT = 96;

test('a server out of file descriptors answers 503 with Retry-After, never "not found", counts it in /metrics, and serves the file once descriptors are free', async (t) => {
  const dir = await tempDir(t);
  const www = path.join(dir, 'builtin');
  await mkdir(www, { recursive: true });
  // Larger than what the server keeps in memory: every request opens the file.
  const body = Buffer.alloc(1024 * 1024, 7);
  await writeFile(path.join(www, 'kernel.img'), body);
  await writeFile(path.join(dir, 'global_config.ini'), `[PACKAGES]\nupload_location: ${www}\ncustom_upload_location: ${path.join(dir, 'custom')}\n`);
  // The server at a low descriptor limit (prlimit, util-linux): about 25 are in use at rest,
  // and loading its modules at start takes more for a moment.
  const server = await startDaemon({
    name: `autotest serve with ${FD_LIMIT.toString()} descriptors`,
    command: '/usr/bin/prlimit',
    host: '127.0.0.1',
    cwd: dir,
    prepare: (port) => [
      `--nofile=${FD_LIMIT.toString()}:${FD_LIMIT.toString()}`,
      process.execPath,
      CLI,
      'serve',
      '--config',
      path.join(dir, 'global_config.ini'),
      '--port',
      port.toString(),
    ],
  });
  t.after(() => server.stop());
  const connect = async (): Promise<net.Socket> => {
    const socket = net.connect(server.port, '127.0.0.1');
    await once(socket, 'connect');
    return socket;
  };
  const asker = await connect();
  const held: net.Socket[] = [];
  t.after(() => {
    for (const socket of [asker, ...held]) socket.destroy();
  });
  // Bounded: 120 connections take every descriptor the server has left (it accepts about 70).
  for (let i = 0; i < 120; i += 1) held.push(await connect());
  // Until the server holds all its descriptors (prlimit execs node: same pid); bounded: 50 tries.
  for (let i = 0; i < 50 && (await readdir(`/proc/${server.pid.toString()}/fd`)).length < FD_LIMIT - 1; i += 1) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const head = await rawRequest(asker, '/packages/builtin/kernel.img');
  assert.match(head, /^HTTP\/1\.1 503 /, head);
  assert.match(head, /\r\nretry-after: 1\r\n/i);
  for (const socket of held) socket.destroy();
  asker.destroy();
  // The descriptors come back as the server sees the connections close (bounded: 50 tries).
  let answer: Answer | undefined;
  for (let i = 0; i < 50 && answer?.status !== 200; i += 1) {
    answer = await request(`http://127.0.0.1:${server.port.toString()}`, '/packages/builtin/kernel.img').catch(() => undefined);
    if (answer?.status !== 200) await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.equal(answer?.status, 200);
  assert.deepEqual(answer.body, body);
  const metrics = await request(`http://127.0.0.1:${server.port.toString()}`, '/metrics');
  assert.match(metrics.body.toString(), /autotest_errors_total\{kind="unavailable"\} [1-9]/);
});

test('/api/consistency without the token answers the last check with its time and starts no new one within a minute; with the token a fresh check runs, one at a time for all who ask', async (t) => {
  const site = await startSite(t);
  interface Check {
    checkedAt: string;
    locations: { location: string; problems: { kind: string; file: string }[] }[];
  }
  const consistency = async (headers: Record<string, string> = {}): Promise<Check> => {
    const answer = await request(site.url, '/api/consistency', { headers });
    assert.equal(answer.status, 200, answer.body.toString());
    return JSON.parse(answer.body.toString()) as Check;
  };
  const problemsOf = (check: Check): string[] => check.locations.flatMap((l) => l.problems.map((p) => `${p.kind} ${p.file}`));
  const first = await consistency();
  assert.deepEqual(problemsOf(first), []);
  assert.ok(!Number.isNaN(Date.parse(first.checkedAt)));
  await writeFile(path.join(site.builtin, 'test-dbench.tar.bz2'), 'changed behind the server');
  const again = await Promise.all(Array.from({ length: 5 }, () => consistency()));
  for (const check of again) assert.deepEqual(check, first, 'the last result, with its time, and no new check');
  const auth = { authorization: `Bearer ${TOKEN}` };
  const fresh = await Promise.all(Array.from({ length: 5 }, () => consistency(auth)));
  const found = problemsOf(fresh[0] ?? first);
  assert.equal(found.length, 1, found.join('; '));
  assert.match(found[0] ?? '', /test-dbench\.tar\.bz2/);
  assert.equal(new Set(fresh.map((c) => c.checkedAt)).size, 1, 'requests that came together shared one check');
  assert.notEqual(fresh[0]?.checkedAt, first.checkedAt);
  assert.deepEqual(await consistency(), fresh[0], 'later requests without the token get the fresh result');
});

/** Sends `head` and then up to 64 MB of body until the server closes; what it answered and how much went. */
async function pushUntilClosed(port: number, head: string): Promise<{ answer: string; sent: number }> {
  const pusher = net.connect(port, '127.0.0.1');
  await once(pusher, 'connect');
  // Writes after the server's close fail with EPIPE: that close is what is awaited.
  pusher.on('error', () => undefined);
  let answer = '';
  pusher.on('data', (chunk: Buffer) => {
    answer += chunk.toString('latin1');
  });
  // Plain listeners: events.once would reject on that EPIPE.
  const closed = new Promise<void>((resolve) => {
    pusher.once('close', () => {
      resolve();
    });
  });
  pusher.write(head);
  let sent = 0;
  const chunk = Buffer.alloc(64 * 1024);
  // Bounded: at most the announced 64 MB; a server that closes ends the loop long before.
  while (!pusher.destroyed && sent < 64 * 1024 * 1024) {
    if (!pusher.write(chunk))
      await Promise.race([
        new Promise((resolve) => {
          pusher.once('drain', resolve);
        }),
        closed,
      ]);
    sent += chunk.length;
  }
  pusher.end();
  await closed;
  return { answer, sent };
}

test('an upload that trickles below upload_min_rate is cut with 408, its staging removed, and the server goes on; a body sent to a route that takes none is not read to its end', async (t) => {
  const site = await startSite(t, { server: { upload_min_rate: '1', upload_rate_window: '1' } });
  const { port } = new URL(site.url);
  // A token holder sending one byte every 200 ms: 5 bytes a second, below 1 KB/s. Bounded: at most 100 bytes.
  const slow = net.connect(Number(port), '127.0.0.1');
  await once(slow, 'connect');
  t.after(() => {
    slow.destroy();
  });
  // Writes after the server has cut it fail with EPIPE: that is the cut.
  slow.on('error', () => undefined);
  slow.write(`PUT /api/custom/test-slow.tar.bz2 HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Length: 100000\r\n\r\n`);
  let head = '';
  slow.on('data', (chunk: Buffer) => {
    head += chunk.toString('latin1');
  });
  for (let i = 0; i < 100 && head === '' && !slow.destroyed; i += 1) {
    slow.write('x');
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  assert.match(head, /^HTTP\/1\.1 408 /);
  assert.match(head, /upload_min_rate/);
  assert.equal(await exists(path.join(site.custom, 'test-slow.tar.bz2')), false);
  assert.deepEqual(await readdir(site.staging).catch(() => []), [], 'its staging is removed');

  // 64 MB announced where no body is taken, or to an upload answered before its body is read:
  // answered, then the connection is closed long before the body could have been read.
  for (const head of [
    'POST /healthz HTTP/1.1',
    'PUT /api/custom/a/b HTTP/1.1',
    `PUT /api/custom/${'n'.repeat(700)} HTTP/1.1`,
    'PUT /api/custom/test-x.tar.bz2 HTTP/1.1',
  ]) {
    const { answer, sent } = await pushUntilClosed(
      Number(port),
      `${head}\r\nHost: test\r\nContent-Type: application/octet-stream\r\nContent-Length: 67108864\r\n\r\n`,
    );
    assert.match(answer, /^HTTP\/1\.1 4\d\d /, `${head.slice(0, 40)}: ${answer.slice(0, 80)}`);
    assert.match(answer, /connection: close/i, head.slice(0, 40));
    assert.ok(sent < 64 * 1024 * 1024, `${head.slice(0, 40)}: the server closed after ${sent.toString()} of 67108864 bytes`);
  }
  // And it still serves.
  assert.equal((await request(site.url, '/healthz')).status, 200);
});

test('a cached file answered at once carries the same headers and access log line as one answered the long way', async (t) => {
  const dir = await tempDir(t);
  const builtin = path.join(dir, 'builtin');
  await mkdir(builtin, { recursive: true });
  await writeFile(path.join(builtin, 'packages.checksum'), `${'0'.repeat(32)}  test-a.tar.bz2\n`);
  await writeFile(path.join(dir, 'global_config.ini'), `[PACKAGES]\nupload_location: ${builtin}\ncustom_upload_location: ${path.join(dir, 'custom')}\n`);
  const lines: string[] = [];
  const logStream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(
        ...chunk
          .toString('utf8')
          .split('\n')
          .filter((l) => l !== ''),
      );
      done();
    },
  });
  const config = await loadConfig({ file: path.join(dir, 'global_config.ini'), env: {} });
  const app = await buildServer({ config, logLevel: 'info', logStream, cacheDir: path.join(dir, 'cache') });
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => app.close());
  const file = '/packages/builtin/packages.checksum';
  await request(url, file);
  // Within a second of the first, unconditional: answered at once from memory.
  const fast = await request(url, file, { headers: { 'x-request-id': 'fast-1' } });
  // A conditional that does not match goes the long way to the same 200.
  const slow = await request(url, file, { headers: { 'x-request-id': 'slow-1', 'if-none-match': '"another"' } });
  const shown = (answer: Answer): Record<string, unknown> =>
    Object.fromEntries(Object.entries(answer.headers).filter(([name]) => !['date', 'x-request-id', 'connection', 'keep-alive'].includes(name)));
  assert.equal(fast.status, 200);
  assert.deepEqual(shown(fast), shown(slow));
  assert.deepEqual(fast.body, slow.body);
  assert.equal(fast.headers['x-request-id'], 'fast-1');
  const logged = (id: string): Record<string, unknown> => {
    const line = lines.find((l) => l.includes(`"reqId":"${id}"`));
    assert.ok(line, `an access line for ${id}`);
    const { time, responseTime, reqId, pid, hostname, ...rest } = JSON.parse(line) as Record<string, unknown>;
    assert.equal(typeof time, 'number');
    assert.equal(typeof responseTime, 'number');
    assert.equal(reqId, id);
    assert.equal(pid, process.pid);
    assert.equal(typeof hostname, 'string');
    return rest;
  };
  assert.deepEqual(logged('fast-1'), logged('slow-1'));
  assert.deepEqual(logged('fast-1'), {
    level: 30,
    req: { method: 'GET', url: file },
    res: { statusCode: 200 },
    bytes: fast.body.length,
    msg: 'request completed',
  });
});

test('a replaced packages.checksum is served at once, never the old one from memory', async (t) => {
  const site = await startSite(t);
  const first = await request(site.url, '/packages/builtin/packages.checksum');
  assert.equal(first.status, 200);
  // As the packager does: a new file renamed over the old one.
  const next = `${first.body.toString()}${'0'.repeat(32)}  kernel-new.img\n`;
  await writeFile(path.join(site.builtin, '.tmp.next'), next);
  const { rename } = await import('node:fs/promises');
  await rename(path.join(site.builtin, '.tmp.next'), path.join(site.builtin, 'packages.checksum'));
  // inotify tells the server; allow it a moment, bounded, and never accept a mix.
  let body = '';
  for (let i = 0; i < 20; i += 1) {
    body = (await request(site.url, '/packages/builtin/packages.checksum')).body.toString();
    assert.ok(body === first.body.toString() || body === next, 'either the old or the new index, whole');
    if (body === next) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.equal(body, next);
});

test('shutting down lets a running download finish and refuses new requests', async (t) => {
  const site = await startSite(t);
  const big = Buffer.alloc(64 * 1024 * 1024, 5);
  await writeFile(path.join(site.builtin, 'kernel-64m.img'), big);
  const config = await loadConfig({ file: path.join(site.dir, 'global_config.ini'), env: {} });
  const app = await buildServer({ config, logLevel: 'silent', cacheDir: path.join(site.dir, 'cache') });
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  const { hostname, port } = new URL(url);
  const received = await new Promise<number>((resolve, reject) => {
    http
      .get({ host: hostname, port, path: '/packages/builtin/kernel-64m.img', agent: false }, (res) => {
        let bytes = 0;
        res.once('data', () => {
          void app.close();
        });
        // Read slowly, so the download is still running when the server is told to stop.
        res.on('data', (c: Buffer) => {
          bytes += c.length;
          res.pause();
          setTimeout(() => res.resume(), 1);
        });
        res.on('end', () => {
          resolve(bytes);
        });
        res.on('error', reject);
      })
      .on('error', reject);
  });
  assert.equal(received, big.length, 'the download finished whole');
  await assert.rejects(request(url, '/packages/builtin/packages.checksum'), /ECONNREFUSED/);
});

test('an upload is stored byte for byte whatever Content-Type it declares, and If-Range with a weak or old validator gets the whole file', async (t) => {
  const site = await startSite(t);
  const auth = { authorization: `Bearer ${TOKEN}` };
  const bytes = Buffer.from([0xff, 0xfe, 0x00, 0x41, 0xc3, 0x28, 0x7b]);
  for (const [name, type] of [
    ['kernel-a.img', 'text/plain'],
    ['kernel-b.img', 'application/json'],
    ['kernel-c.img', 'multipart/form-data; boundary=x'],
  ] as const) {
    const answer = await request(site.url, `/api/custom/${name}`, { method: 'PUT', headers: { ...auth, 'content-type': type }, body: bytes });
    assert.equal(answer.status, 200, `${type}: ${answer.body.toString()}`);
    assert.deepEqual(await readFile(path.join(site.custom, name)), bytes, type);
  }
  const file = '/packages/builtin/test-dbench.tar.bz2';
  const full = await request(site.url, file);
  const strong = full.headers.etag ?? '';
  assert.ok(!strong.startsWith('W/'), 'a strong ETag');
  assert.equal((await request(site.url, file, { headers: { range: 'bytes=0-9', 'if-range': strong } })).status, 206);
  assert.equal((await request(site.url, file, { headers: { range: 'bytes=0-9', 'if-range': `W/${strong}` } })).status, 200);
  assert.equal((await request(site.url, file, { headers: { range: 'bytes=0-9', 'if-range': '"old"' } })).status, 200);
});

/** A gzip tarball made by hand from `entries` (name and body), as another tool would write it. */
async function gzipTarball(file: string, entries: { name: string; body: Buffer | string }[]): Promise<Buffer> {
  const { default: tar } = await import('tar-stream');
  const { createGzip } = await import('node:zlib');
  const { pipeline } = await import('node:stream/promises');
  const { createWriteStream } = await import('node:fs');
  const pack = tar.pack();
  const done = pipeline(pack, createGzip(), createWriteStream(file));
  for (const { name, body } of entries) {
    await new Promise<void>((resolve, reject) => {
      pack.entry({ name, mode: 0o644 }, body, (error) => {
        if (error) reject(error);
        else resolve();
      });
    });
  }
  pack.finalize();
  await done;
  return readFile(file);
}

/** Polls `check` until it holds, at most `tries` times 50 ms apart; a bound, never a timing asserted. */
async function waitFor(check: () => Promise<boolean>, what: string, tries = 400): Promise<void> {
  for (let i = 0; i < tries; i += 1) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.fail(`never happened: ${what}`);
}

async function stagedUploads(staging: string): Promise<string[]> {
  return (await readdir(staging).catch(() => [])).filter((name) => name.startsWith('.upload-'));
}

test('an upload past max_upload_entries or max_upload_expanded_size is refused with 413 naming the key, and nothing is kept', async (t) => {
  const site = await startSite(t, { server: { max_upload_entries: '10', max_upload_expanded_size: '0.5' } });
  const auth = { authorization: `Bearer ${TOKEN}` };
  const many = await gzipTarball(
    path.join(site.dir, 'many.tar.gz'),
    Array.from({ length: 11 }, (_, i) => ({ name: `f${i.toString()}`, body: 'x' })),
  );
  const crowded = await request(site.url, '/api/custom/test-many.tar.gz', { method: 'PUT', headers: auth, body: many });
  assert.equal(crowded.status, 413, crowded.body.toString());
  const crowdedAnswer = JSON.parse(crowded.body.toString()) as { error: string; message: string; hint: string };
  assert.equal(crowdedAnswer.error, 'ERR_TOO_LARGE');
  assert.match(
    crowdedAnswer.message,
    /^test-many\.tar\.gz: entry "f10" refused: the archive holds more than 10 entries \(max_upload_entries = 10 in \[SERVER\]\)$/,
  );
  assert.match(crowdedAnswer.hint, /raise max_upload_entries/);

  const bomb = await gzipTarball(path.join(site.dir, 'bomb.tar.gz'), [
    { name: 'a', body: Buffer.alloc(300_000) },
    { name: 'b', body: Buffer.alloc(300_000) },
  ]);
  assert.ok(bomb.length < 10_000, 'a small upload');
  const expanded = await request(site.url, '/api/custom/test-bomb.tar.gz', { method: 'PUT', headers: auth, body: bomb });
  assert.equal(expanded.status, 413, expanded.body.toString());
  assert.match(
    expanded.body.toString(),
    /entry \\"b\\" refused: the archive unpacks to more than 500000 bytes \(max_upload_expanded_size = 0\.5 MB in \[SERVER\]\)/,
  );
  assert.deepEqual(await readdir(site.custom), []);
  assert.deepEqual(await stagedUploads(site.staging), []);

  const fits = await gzipTarball(
    path.join(site.dir, 'fits.tar.gz'),
    Array.from({ length: 10 }, (_, i) => ({ name: `f${i.toString()}`, body: 'x' })),
  );
  assert.equal((await request(site.url, '/api/custom/test-fits.tar.gz', { method: 'PUT', headers: auth, body: fits })).status, 200);
});

test('a full staging disk during the trial extraction is 507 naming custom_download_location and the bytes still needed, never "damaged", and nothing is kept', async (t) => {
  const mnt = await mountTmpfs(t, await tempDir(t), '2m');
  const site = await startSite(t, { staging: mnt, server: { max_upload_size: '1' } });
  const sizes = [900_000, 900_000, 900_000];
  const tarball = await gzipTarball(
    path.join(site.dir, 'big.tar.gz'),
    sizes.map((size, i) => ({ name: `f${i.toString()}.bin`, body: Buffer.alloc(size, i + 1) })),
  );
  const answer = await request(site.url, '/api/custom/test-big.tar.gz', { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}` }, body: tarball });
  assert.equal(answer.status, 507, answer.body.toString());
  const { error, message, hint } = JSON.parse(answer.body.toString()) as { error: string; message: string; hint: string };
  assert.equal(error, 'ERR_NO_SPACE');
  assert.ok(
    message.startsWith(`custom_download_location ${mnt}: the disk is full (ENOSPC) on the file system mounted at ${mnt}: extracting test-big.tar.gz`),
    message,
  );
  const needed = Number(/needed at least (\d+) more bytes/.exec(message)?.[1]);
  assert.ok(needed > 0 && needed <= 2_700_000, message);
  assert.match(hint, new RegExp(`free at least ${needed.toString()} bytes on ${mnt}`));
  assert.doesNotMatch(`${message} ${hint}`, /damaged|truncated|Premature/);
  assert.deepEqual(await readdir(mnt), []);
  assert.deepEqual(await readdir(site.custom), []);
});

test('one upload more than max_concurrent_uploads is answered 503 with Retry-After before its body is read, and the slot is free again once the first ends', async (t) => {
  const site = await startSite(t, { server: { max_concurrent_uploads: '1', max_upload_size: '100' } });
  const auth = { authorization: `Bearer ${TOKEN}` };
  const { hostname, port } = new URL(site.url);
  // The first upload stays open: its headers and part of its body are sent, the rest never.
  const first = http.request({
    host: hostname,
    port,
    path: '/api/custom/kernel-slow.img',
    method: 'PUT',
    agent: false,
    headers: { ...auth, 'content-length': (10_000_000).toString() },
  });
  first.on('error', () => undefined);
  first.write(Buffer.alloc(100_000, 1));
  await waitFor(async () => (await stagedUploads(site.staging)).length === 1, 'the first upload is being received');

  const second = await request(site.url, '/api/custom/kernel-other.img', { method: 'PUT', headers: auth, body: Buffer.from('kernel') });
  assert.equal(second.status, 503);
  assert.equal(second.headers['retry-after'], '10');
  const busy = JSON.parse(second.body.toString()) as { error: string; message: string };
  assert.equal(busy.error, 'ERR_BUSY');
  assert.match(busy.message, /checking 1 uploads already \(max_concurrent_uploads in \[SERVER\]\)/);

  first.destroy();
  await waitFor(async () => (await stagedUploads(site.staging)).length === 0, 'the cut upload is cleaned up');
  // The slot is given back after the staging folder is gone; a refusal meanwhile is only "busy".
  let third: Answer | undefined;
  await waitFor(
    async () => {
      third = await request(site.url, '/api/custom/kernel-other.img', { method: 'PUT', headers: auth, body: Buffer.from('kernel') });
      return third.status !== 503;
    },
    'the slot is free again',
    40,
  );
  assert.equal(third?.status, 200, third?.body.toString());
  assert.deepEqual(await readdir(site.custom).then((names) => names.filter((n) => n.startsWith('kernel'))), ['kernel-other.img']);
});

test('an uploader that goes away while its package is being checked stops the check: nothing is published and staging is cleaned', async (t) => {
  const site = await startSite(t, { server: { max_upload_size: '20' } });
  // Enough entries that the trial extraction is still running when the uploader leaves.
  const tarball = await gzipTarball(
    path.join(site.dir, 'many.tar.gz'),
    Array.from({ length: 20_000 }, (_, i) => ({ name: `d${(i % 100).toString()}/f${i.toString()}`, body: '' })),
  );
  const { hostname, port } = new URL(site.url);
  const req = http.request({
    host: hostname,
    port,
    path: '/api/custom/test-many.tar.gz',
    method: 'PUT',
    agent: false,
    headers: { authorization: `Bearer ${TOKEN}`, 'content-length': tarball.length.toString() },
  });
  req.on('error', () => undefined);
  req.end(tarball);
  await waitFor(async () => {
    const [upload] = await stagedUploads(site.staging);
    return upload !== undefined && exists(path.join(site.staging, upload, '.check'));
  }, 'the trial extraction has started');
  req.destroy();
  await waitFor(async () => (await stagedUploads(site.staging)).length === 0, 'the check stopped and staging is cleaned');
  assert.deepEqual(await readdir(site.custom), [], 'nothing published');
  assert.equal(await exists(path.join(site.custom, 'packages.checksum')), false);
  const metrics = (await request(site.url, '/metrics')).body.toString();
  assert.match(metrics, /autotest_uploads_total\{outcome="refused"\} 1/);
});

test('a package of 300 files 1,000 folders deep uploads, passes its trial extraction and is published', async (t) => {
  const site = await startSite(t);
  const deep = Array.from({ length: 1000 }, () => 'd').join('/');
  const tarball = await gzipTarball(
    path.join(site.dir, 'deep.tar.gz'),
    Array.from({ length: 300 }, (_, i) => ({ name: `${deep}/f${i.toString()}.txt`, body: 'x' })),
  );
  const answer = await request(site.url, '/api/custom/test-deep.tar.gz', { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}` }, body: tarball });
  assert.equal(answer.status, 200, answer.body.toString());
  assert.deepEqual(await checkConsistency(site.custom), { entries: 1, problems: [] });
  assert.deepEqual(await stagedUploads(site.staging), []);
});

test('every route answers a failure with the status its code has in the one table (404 for ERR_NOT_FOUND, 504 for ERR_TIMEOUT, never 400 for all), and a malformed checksum header is 400 ERR_BAD_REQUEST naming it', async (t) => {
  const site = await startSite(t, {
    routes: (app) => {
      app.get<{ Params: { code: string } }>('/test/fail/:code', (request) => {
        throw new AutotestError(request.params.code as ErrorCode, `failed with ${request.params.code}`, { hint: 'a hint' });
      });
    },
  });
  for (const [code, status] of [
    ['ERR_NOT_FOUND', 404],
    ['ERR_TOO_LARGE', 413],
    ['ERR_TIMEOUT', 504],
    ['ERR_FETCH', 502],
    ['ERR_USAGE', 400],
  ] as const) {
    const answer = await request(site.url, `/test/fail/${code}`);
    assert.equal(answer.status, status, code);
    assert.equal(ERROR_CODES[code].status, status, code);
    assert.deepEqual(JSON.parse(answer.body.toString()), { error: code, message: `failed with ${code}`, hint: 'a hint' });
  }
  const malformed = await request(site.url, '/api/custom/kernel.img', {
    method: 'PUT',
    headers: { authorization: `Bearer ${TOKEN}`, 'x-checksum-md5': 'XYZ' },
    body: Buffer.from('kernel'),
  });
  assert.equal(malformed.status, 400);
  const body = JSON.parse(malformed.body.toString()) as { error: string; message: string };
  assert.equal(body.error, 'ERR_BAD_REQUEST');
  assert.match(body.message, /kernel\.img: X-Checksum-Md5 must be 32 lowercase hex digits/);
  assert.deepEqual(await readdir(site.custom).catch(() => []), []);
});

test('a DELETE of a file no custom location holds is a 404 error answer as every route gives (ERR_NOT_FOUND, a message naming the file), with where it was missing', async (t) => {
  const site = await startSite(t);
  const answer = await request(site.url, '/api/custom/test-never.tar.bz2', { method: 'DELETE', headers: { authorization: `Bearer ${TOKEN}` } });
  assert.equal(answer.status, 404, answer.body.toString());
  const body = JSON.parse(answer.body.toString()) as { error: string; message: string; ok: boolean; locations: { missing: string[] }[] };
  assert.equal(body.error, 'ERR_NOT_FOUND');
  assert.match(body.message, /test-never\.tar\.bz2: in none of the 1 custom location/);
  assert.equal(body.ok, false, 'nothing was deleted');
  assert.deepEqual(
    body.locations.map((l) => l.missing),
    [['test-never.tar.bz2']],
  );
});
