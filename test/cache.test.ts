import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Writable } from 'node:stream';
import { test, type TestContext } from 'node:test';
import { loadConfig } from '../src/config/index.js';
import { formatChecksumFile, formatManifest, type RepositoryIndex } from '../src/packages/index.js';
import { buildServer } from '../src/server/index.js';
import { isAutotestError } from '../src/errors.js';
import { startNginx } from './fixtures/nginx.js';
import { CLI, generateTree, mountTmpfs, runCli, tempDir, writeConfig } from './helpers.js';

/** Our own upstream: counts GETs per file, and can hold a file after its first half until released. */
interface Upstream {
  url: string;
  files: Map<string, Buffer>;
  gets(file: string): number;
  /** GETs of `file` answered 304 to their If-None-Match. */
  notModified(file: string): number;
  /** From now on `file` is sent in two halves; the second waits for the returned release. */
  hold(file: string): () => void;
  /** From now on a request for `file` gets no answer at all (not even headers) until the upstream stops. */
  stall(file: string): void;
  stop(): Promise<void>;
}

async function startUpstream(t: TestContext, files: Map<string, Buffer>): Promise<Upstream> {
  const counts = new Map<string, number>();
  const unchanged = new Map<string, number>();
  const held = new Map<string, Promise<void>>();
  const stalled = new Set<string>();
  const server = http.createServer((request, response) => {
    const file = decodeURIComponent((request.url ?? '/').slice(1));
    counts.set(file, (counts.get(file) ?? 0) + 1);
    if (stalled.has(file)) return;
    const body = files.get(file);
    if (!body) {
      response.writeHead(404).end();
      return;
    }
    // An ETag as nginx and S3 give one, and If-None-Match answered as they do.
    const etag = `"${createHash('md5').update(body).digest('hex')}"`;
    if (request.headers['if-none-match'] === etag) {
      unchanged.set(file, (unchanged.get(file) ?? 0) + 1);
      response.writeHead(304, { etag }).end();
      return;
    }
    response.writeHead(200, { 'content-length': body.length, etag });
    const gate = held.get(file);
    if (!gate) {
      response.end(body);
      return;
    }
    const half = Math.floor(body.length / 2);
    response.write(body.subarray(0, half));
    void gate.then(() => response.end(body.subarray(half)));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const stop = async (): Promise<void> => {
    if (!server.listening) return;
    server.closeAllConnections();
    server.close();
    await once(server, 'close');
  };
  t.after(stop);
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port.toString()}`,
    files,
    gets: (file) => counts.get(file) ?? 0,
    notModified: (file) => unchanged.get(file) ?? 0,
    hold(file) {
      let release = (): void => undefined;
      held.set(
        file,
        new Promise((resolve) => {
          release = resolve;
        }),
      );
      return () => {
        held.delete(file);
        release();
      };
    },
    stall(file) {
      stalled.add(file);
    },
    stop,
  };
}

/** packages.checksum and packages.json for `packages`, as the packager writes them (packages.checksum alone, as Autotest's, with `md5Only`). */
function publish(packages: Record<string, Buffer>, md5Only = false): Map<string, Buffer> {
  const index: RepositoryIndex = new Map();
  for (const [file, body] of Object.entries(packages)) {
    index.set(file, {
      file,
      size: body.length,
      md5: createHash('md5').update(body).digest('hex'),
      sha256: createHash('sha256').update(body).digest('hex'),
    });
  }
  return new Map([
    ...Object.entries(packages),
    ['packages.checksum', Buffer.from(formatChecksumFile(index))],
    ...(md5Only ? [] : [['packages.json', Buffer.from(formatManifest(index))] as const]),
  ]);
}

async function writeFrontConfig(dir: string, upstream: string, server: Record<string, string> = {}, fetch: Record<string, string> = {}): Promise<string> {
  const file = path.join(dir, 'global_config.ini');
  const keys = { builtin_dir: upstream, cache_dir: path.join(dir, 'front-cache'), port: '0', log_level: 'silent', ...server };
  await writeFile(
    file,
    [
      '[PACKAGES]',
      'fetch_retries: 0',
      'fetch_connect_timeout: 2',
      ...Object.entries(fetch).map(([k, v]) => `${k}: ${v}`),
      '[SERVER]',
      ...Object.entries(keys).map(([k, v]) => `${k}: ${v}`),
      '',
    ].join('\n'),
  );
  return file;
}

/** `autotest serve` in this process, in front of `upstream`; its URL. With `logs`, its log (JSON lines) goes there; `fetch` adds [PACKAGES] keys. */
async function startFront(
  t: TestContext,
  dir: string,
  upstream: string,
  server: Record<string, string> = {},
  logs?: string[],
  fetch: Record<string, string> = {},
): Promise<string> {
  await mkdir(dir, { recursive: true });
  const config = await loadConfig({ file: await writeFrontConfig(dir, upstream, server, fetch), env: {} });
  const logStream =
    logs &&
    new Writable({
      write(chunk: Buffer, _encoding, done) {
        logs.push(chunk.toString('utf8'));
        done();
      },
    });
  const app = await buildServer({ config, logLevel: logs ? 'info' : 'silent', ...(logStream ? { logStream } : {}), cacheDir: path.join(dir, 'client-cache') });
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => app.close());
  return url;
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** A GET whose answer comes back once its headers arrive; `body` settles when it ends, and rejects when it is cut. */
function open(
  url: string,
  headers: http.OutgoingHttpHeaders = {},
): Promise<{ response: http.IncomingMessage; firstBytes: Promise<void>; body: Promise<Buffer> }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent: false, headers }, (response) => {
        const chunks: Buffer[] = [];
        const firstBytes = once(response, 'data').then(() => undefined);
        const body = new Promise<Buffer>((done, fail) => {
          response.on('data', (chunk: Buffer) => chunks.push(chunk));
          response.on('end', () => {
            done(Buffer.concat(chunks));
          });
          response.on('error', fail);
          response.on('aborted', () => {
            fail(new Error('cut'));
          });
        });
        // The first chunk is also seen by the collector: both listeners get it.
        void firstBytes.catch(() => undefined);
        void body.catch(() => undefined);
        resolve({ response, firstBytes, body });
      })
      .on('error', reject);
  });
}

async function get(url: string, headers: http.OutgoingHttpHeaders = {}): Promise<Answer> {
  const { response, body } = await open(url, headers);
  return { status: response.statusCode ?? 0, headers: response.headers, body: await body };
}

async function metric(front: string, name: string): Promise<number> {
  const text = (await get(`${front}/metrics`)).body.toString('utf8');
  return [...text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm'))].reduce((sum, match) => sum + Number(match[1]), 0);
}

/** Waits for a condition the server reaches on its own (an eviction runs after the answer that allowed it). */
async function until(condition: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 500 && !(await condition()); i += 1) await new Promise((resolve) => setTimeout(resolve, 10));
}

const BIG = 'test-big.tar.bz2';
const SMALL = 'test-small.tar.bz2';

test('streams one upstream fetch to 50 concurrent clients: each gets its first bytes before the upstream ends, and all get the verified package', async (t) => {
  const dir = await tempDir(t);
  const body = randomBytes(4 * 1024 * 1024);
  const upstream = await startUpstream(t, publish({ [BIG]: body }));
  const front = await startFront(t, dir, upstream.url);
  const release = upstream.hold(BIG);
  const clients = await Promise.all(Array.from({ length: 50 }, () => open(`${front}/packages/builtin/${BIG}`)));
  // The upstream still holds its second half: what the clients have came while it was under way.
  await Promise.all(clients.map((client) => client.firstBytes));
  release();
  const bodies = await Promise.all(clients.map((client) => client.body));
  for (const received of bodies) assert.ok(received.equals(body));
  assert.equal(upstream.gets(BIG), 1);
  assert.equal(await metric(front, 'autotest_cache_misses_total'), 1);
  assert.equal(await metric(front, 'autotest_cache_coalesced_total'), 49);
  assert.equal(await metric(front, 'autotest_cache_upstream_bytes_total'), body.length);
  const again = await get(`${front}/packages/builtin/${BIG}`);
  assert.equal(again.headers['x-autotest-cache'], 'hit');
  assert.ok(again.body.equals(body));
  assert.equal(upstream.gets(BIG), 1);
});

test('passes the upstream index files through byte for byte, packages.json.sig included, and answers 404 for files the index does not name', async (t) => {
  const dir = await tempDir(t);
  const files = publish({ [SMALL]: randomBytes(1000) });
  files.set('packages.json.sig', Buffer.from('-----BEGIN SSH SIGNATURE-----\nxyz\n-----END SSH SIGNATURE-----\n'));
  files.set('stray.txt', Buffer.from('not indexed'));
  const upstream = await startUpstream(t, files);
  const front = await startFront(t, dir, upstream.url);
  for (const file of ['packages.checksum', 'packages.json', 'packages.json.sig']) {
    const answer = await get(`${front}/packages/builtin/${file}`);
    assert.equal(answer.status, 200, file);
    assert.ok(answer.body.equals(files.get(file) ?? Buffer.alloc(0)), file);
  }
  const stray = await get(`${front}/packages/builtin/stray.txt`);
  assert.equal(stray.status, 404);
  assert.match(stray.body.toString(), /stray\.txt: not in this repository/);
  assert.equal(upstream.gets('stray.txt'), 0);
});

test('keeps nothing of a corrupt upstream copy: every waiting client gets a cut body, and the next request fetches again', async (t) => {
  const dir = await tempDir(t);
  const body = randomBytes(2 * 1024 * 1024);
  const files = publish({ [BIG]: body });
  const corrupt = Buffer.from(body);
  corrupt[corrupt.length - 1] = (corrupt[corrupt.length - 1] ?? 0) ^ 0xff;
  files.set(BIG, corrupt);
  const upstream = await startUpstream(t, files);
  const front = await startFront(t, dir, upstream.url);
  const release = upstream.hold(BIG);
  const clients = await Promise.all(Array.from({ length: 5 }, () => open(`${front}/packages/builtin/${BIG}`)));
  await Promise.all(clients.map((client) => client.firstBytes));
  release();
  for (const client of clients) await assert.rejects(client.body);
  assert.deepEqual(
    (await readdir(path.join(dir, 'front-cache', 'content'))).filter((name) => !name.startsWith('.')),
    [],
  );
  assert.equal(await metric(front, 'autotest_cache_rejected_total'), 1);
  files.set(BIG, body);
  const fixed = await get(`${front}/packages/builtin/${BIG}`);
  assert.equal(fixed.status, 200);
  assert.ok(fixed.body.equals(body));
  assert.equal(upstream.gets(BIG), 2);
});

test('serves the last good index and cached packages, marked stale, when every upstream is down', async (t) => {
  const dir = await tempDir(t);
  const files = publish({ [SMALL]: randomBytes(1000) });
  const upstream = await startUpstream(t, files);
  const front = await startFront(t, dir, upstream.url, { index_max_age: '0' });
  assert.equal((await get(`${front}/packages/builtin/${SMALL}`)).status, 200);
  await upstream.stop();
  const index = await get(`${front}/packages/builtin/packages.checksum`);
  assert.equal(index.status, 200);
  assert.equal(index.headers['x-autotest-stale'], '1');
  assert.match(index.headers.warning ?? '', /^110 /);
  assert.ok(index.body.equals(files.get('packages.checksum') ?? Buffer.alloc(0)));
  const cached = await get(`${front}/packages/builtin/${SMALL}`);
  assert.equal(cached.status, 200);
  assert.equal(cached.headers['x-autotest-stale'], '1');
  assert.ok(cached.body.equals(files.get(SMALL) ?? Buffer.alloc(0)));
  assert.equal(await metric(front, 'autotest_cache_stale_answers_total'), 2);
});

test('sees a new publish once index_max_age has passed', async (t) => {
  const dir = await tempDir(t);
  const files = publish({ [SMALL]: randomBytes(1000) });
  const upstream = await startUpstream(t, files);
  const front = await startFront(t, dir, upstream.url, { index_max_age: '0' });
  assert.equal((await get(`${front}/packages/builtin/${BIG}`)).status, 404);
  const body = randomBytes(3000);
  for (const [file, content] of publish({ [SMALL]: files.get(SMALL) ?? Buffer.alloc(0), [BIG]: body })) files.set(file, content);
  const answer = await get(`${front}/packages/builtin/${BIG}`);
  assert.equal(answer.status, 200);
  assert.ok(answer.body.equals(body));
});

test('restarts after kill -9 in the middle of a fetch with only its complete verified entries, the unfinished download removed', async (t) => {
  const dir = await tempDir(t);
  const small = randomBytes(1000);
  const upstream = await startUpstream(t, publish({ [SMALL]: small, [BIG]: randomBytes(2 * 1024 * 1024) }));
  const config = await writeFrontConfig(dir, upstream.url);
  const child = spawn(process.execPath, [CLI, 'serve', '--config', config], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.after(() => {
    child.kill('SIGKILL');
  });
  let printed = '';
  child.stdout.setEncoding('utf8');
  const front = await new Promise<string>((resolve) => {
    child.stdout.on('data', (chunk: string) => {
      printed += chunk;
      const address = /at (http:\/\/\S+?)\/packages\/builtin\//.exec(printed)?.[1];
      if (address !== undefined) resolve(address);
    });
  });
  assert.equal((await get(`${front}/packages/builtin/${SMALL}`)).status, 200);
  upstream.hold(BIG);
  const client = await open(`${front}/packages/builtin/${BIG}`);
  await client.firstBytes;
  const contentDir = path.join(dir, 'front-cache', 'content');
  assert.equal((await readdir(contentDir)).filter((name) => name.startsWith('.tmp.')).length, 1);
  child.kill('SIGKILL');
  await once(child, 'exit');
  await assert.rejects(client.body);

  const restarted = await startFront(t, dir, upstream.url);
  assert.deepEqual(await readdir(contentDir), [`sha256-${createHash('sha256').update(small).digest('hex')}`]);
  const again = await get(`${restarted}/packages/builtin/${SMALL}`);
  assert.equal(again.headers['x-autotest-cache'], 'hit');
  assert.ok(again.body.equals(small));
  assert.equal(upstream.gets(SMALL), 1);
});

test('evicts beyond cache_size by least recent use, but never an entry a client is still reading', async (t) => {
  const dir = await tempDir(t);
  const big = randomBytes(16 * 1024 * 1024);
  const other = randomBytes(8 * 1024 * 1024);
  const upstream = await startUpstream(t, publish({ [BIG]: big, [SMALL]: other }));
  const front = await startFront(t, dir, upstream.url, { cache_size: '0.02' });
  assert.equal((await get(`${front}/packages/builtin/${BIG}`)).status, 200);
  // A client that reads the first bytes of the cached package, then stops reading.
  const reader = await open(`${front}/packages/builtin/${BIG}`);
  assert.equal(reader.response.headers['x-autotest-cache'], 'hit');
  await reader.firstBytes;
  reader.response.pause();
  t.after(() => {
    reader.response.destroy();
  });
  const second = await get(`${front}/packages/builtin/${SMALL}`);
  assert.ok(second.body.equals(other));
  const contentDir = path.join(dir, 'front-cache', 'content');
  const bigEntry = `sha256-${createHash('sha256').update(big).digest('hex')}`;
  // Over the bound with both, and the least recently used one is being read: the other goes.
  await until(async () => (await readdir(contentDir)).length === 1);
  assert.deepEqual(await readdir(contentDir), [bigEntry]);
  reader.response.resume();
  assert.ok((await reader.body).equals(big));
  assert.equal(await metric(front, 'autotest_cache_evictions_total'), 1);
  assert.equal(await metric(front, 'autotest_cache_bytes'), big.length);
});

test('streams packages through, verified, with one log line and a metric, never an error page, when the disk of cache_dir is full', async (t) => {
  const dir = await tempDir(t);
  const disk = await mountTmpfs(t, dir, '6m');
  // One package larger than the disk (refused before a byte is written: the index gives its
  // size), one of no known size (packages.checksum alone) that fills it in the middle of its download.
  const sized = randomBytes(8 * 1024 * 1024);
  const unsized = randomBytes(7 * 1024 * 1024);
  const sizedUpstream = await startUpstream(t, publish({ [BIG]: sized }));
  const unsizedUpstream = await startUpstream(t, publish({ [BIG]: unsized }, true));
  const logs: string[] = [];
  const front = await startFront(t, dir, sizedUpstream.url, { cache_dir: path.join(disk, 'cache'), custom_dir: unsizedUpstream.url }, logs);

  const first = await Promise.all(Array.from({ length: 5 }, () => get(`${front}/packages/builtin/${BIG}`)));
  for (const answer of first) {
    assert.equal(answer.status, 200);
    assert.ok(answer.body.equals(sized));
  }
  const release = unsizedUpstream.hold(BIG);
  const clients = await Promise.all(Array.from({ length: 5 }, () => open(`${front}/packages/custom/${BIG}`)));
  await Promise.all(clients.map((client) => client.firstBytes));
  release();
  for (const client of clients) {
    assert.equal(client.response.statusCode, 200);
    assert.ok((await client.body).equals(unsized));
  }
  assert.equal(logs.filter((line) => line.includes('the disk of cache_dir is full')).length, 1, logs.join(''));
  assert.equal(await metric(front, 'autotest_cache_disk_full'), 1);
  assert.equal(await metric(front, 'autotest_cache_passthrough_total'), 10);
  assert.equal(await metric(front, 'autotest_cache_bytes'), 0);
  assert.deepEqual(await readdir(path.join(disk, 'cache', 'content')), [], 'nothing kept, no temp left');
});

test('revalidates the index with the upstream ETag after index_max_age: an unchanged index costs a 304, a new publish is read whole', async (t) => {
  const dir = await tempDir(t);
  const files = publish({ [SMALL]: randomBytes(1000) });
  const upstream = await startUpstream(t, files);
  const front = await startFront(t, dir, upstream.url, { index_max_age: '0' });
  const first = await get(`${front}/packages/builtin/packages.checksum`);
  assert.ok(first.body.equals(files.get('packages.checksum') ?? Buffer.alloc(0)));
  assert.equal(upstream.notModified('packages.checksum'), 0);
  const again = await get(`${front}/packages/builtin/packages.checksum`);
  assert.ok(again.body.equals(first.body));
  assert.equal(upstream.gets('packages.checksum'), 2);
  assert.equal(upstream.notModified('packages.checksum'), 1, 'the second read carried the ETag and was answered 304');
  assert.equal(upstream.notModified('packages.json'), 1);
  assert.equal(again.headers.etag, first.headers.etag, 'the front serves the same index under the same tag');
  assert.equal(await metric(front, 'autotest_cache_index_revalidations_total{result="unchanged"}'), 2);

  const body = randomBytes(3000);
  for (const [file, content] of publish({ [SMALL]: files.get(SMALL) ?? Buffer.alloc(0), [BIG]: body })) files.set(file, content);
  const changed = await get(`${front}/packages/builtin/packages.checksum`);
  assert.ok(changed.body.equals(files.get('packages.checksum') ?? Buffer.alloc(0)));
  assert.equal(upstream.notModified('packages.checksum'), 1);
  assert.ok((await get(`${front}/packages/builtin/${BIG}`)).body.equals(body));
  assert.ok((await metric(front, 'autotest_cache_index_revalidations_total{result="changed"}')) >= 2);
});

test('30 concurrent client installs through a front before nginx cost nginx one GET per package, and all install the same verified files', async (t) => {
  const dir = await tempDir(t);
  const clientDir = await generateTree(dir, 2, 2_000_000);
  const www = path.join(dir, 'www');
  const publishConfig = await writeConfig(dir, { upload_location: www, client_dir: clientDir, minimum_free_space: '0' }, 'publish.ini');
  const upload = await runCli(['packager', 'upload', '-t', 't000,t001', '--config', publishConfig], { cwd: dir });
  assert.equal(upload.code, 0, upload.stdout + upload.stderr);
  const nginx = await startNginx({ root: www });
  t.after(() => nginx.stop());
  const front = await startFront(t, dir, nginx.url);
  const fetchConfig = await writeConfig(dir, { fetch_location: `${front}/packages/builtin` }, 'fetch.ini');
  const installs = await Promise.all(
    Array.from({ length: 30 }, async (_, i) => {
      const machine = path.join(dir, `machine-${i.toString()}`);
      await mkdir(machine);
      return runCli(['client', 'install', 'test', 't000,t001', '--config', fetchConfig, '--install-dir', path.join(machine, 'client')], { cwd: machine });
    }),
  );
  for (const install of installs) assert.equal(install.code, 0, install.stdout + install.stderr);
  const wanted = await readFile(path.join(clientDir, 'tests', 't001', 'data.bin'));
  for (let i = 0; i < 30; i += 1) {
    assert.ok((await readFile(path.join(dir, `machine-${i.toString()}`, 'client', 'tests', 't001', 'data.bin'))).equals(wanted));
  }
  const log = await readFile(nginx.accessLog, 'utf8');
  for (const file of ['test-t000.tar.bz2', 'test-t001.tar.bz2']) {
    assert.equal(log.split('\n').filter((line) => line.includes(`"GET /${file} `)).length, 1, `${file}: one GET from nginx`);
  }
  assert.equal(await metric(front, 'autotest_cache_misses_total'), 2);
  assert.equal((await metric(front, 'autotest_cache_hits_total')) + (await metric(front, 'autotest_cache_coalesced_total')), 58);
});

test('answers a Range request during the upstream download from the bytes that have arrived, and an open-ended one as they arrive', async (t) => {
  const dir = await tempDir(t);
  const body = randomBytes(4 * 1024 * 1024);
  const upstream = await startUpstream(t, publish({ [BIG]: body }));
  const front = await startFront(t, dir, upstream.url);
  const release = upstream.hold(BIG);
  const whole = await open(`${front}/packages/builtin/${BIG}`);
  await whole.firstBytes;
  // The upstream has sent its first half and holds the rest.
  const early = await get(`${front}/packages/builtin/${BIG}`, { range: 'bytes=1000-1999' });
  assert.equal(early.status, 206);
  assert.equal(early.headers['content-range'], `bytes 1000-1999/${body.length.toString()}`);
  assert.ok(early.body.equals(body.subarray(1000, 2000)));
  const tail = await open(`${front}/packages/builtin/${BIG}`, { range: 'bytes=1048576-' });
  assert.equal(tail.response.statusCode, 206);
  await tail.firstBytes;
  const otherTag = await open(`${front}/packages/builtin/${BIG}`, { range: 'bytes=0-9', 'if-range': '"sha256-0000"' });
  assert.equal(otherTag.response.statusCode, 200, 'If-Range with another tag: the whole file');
  assert.equal(upstream.gets(BIG), 1);
  release();
  assert.ok((await tail.body).equals(body.subarray(1048576)));
  assert.ok((await otherTag.body).equals(body));
  assert.ok((await whole.body).equals(body));
  const unsatisfiable = await get(`${front}/packages/builtin/${BIG}`, { range: `bytes=${body.length.toString()}-` });
  assert.equal(unsatisfiable.status, 416);
});

test('answers 404 for a package its index names but no upstream has, 504 when the upstream sends nothing within fetch_timeout, and 502 for the package list when no upstream answers', async (t) => {
  const dir = await tempDir(t);
  const files = publish({ [SMALL]: randomBytes(1000), [BIG]: randomBytes(3000) });
  const upstream = await startUpstream(t, files);
  const front = await startFront(t, dir, upstream.url, {}, undefined, { fetch_timeout: '0.5' });
  files.delete(SMALL);
  const missing = await get(`${front}/packages/builtin/${SMALL}`);
  assert.equal(missing.status, 404, missing.body.toString());
  assert.equal((JSON.parse(missing.body.toString()) as { error: string }).error, 'ERR_NOT_FOUND');
  upstream.stall(BIG);
  const slow = await get(`${front}/packages/builtin/${BIG}`);
  assert.equal(slow.status, 504, slow.body.toString());
  const answer = JSON.parse(slow.body.toString()) as { error: string; message: string };
  assert.equal(answer.error, 'ERR_TIMEOUT');
  assert.match(answer.message, /not complete within 0\.5 s \(fetch_timeout\)/);

  const gone = await startUpstream(t, new Map());
  await gone.stop();
  const orphan = await startFront(t, path.join(dir, 'orphan'), gone.url);
  const list = await get(`${orphan}/api/packages`);
  assert.equal(list.status, 502, list.body.toString());
  assert.equal((JSON.parse(list.body.toString()) as { error: string }).error, 'ERR_FETCH');
});

test('a cache_dir under a file stops the server at start with an error naming cache_dir, the path and why', async (t) => {
  const dir = await tempDir(t);
  await writeFile(path.join(dir, 'a-file'), 'not a folder');
  const upstream = await startUpstream(t, publish({ 'test-a.tar.bz2': Buffer.from('a') }));
  await assert.rejects(startFront(t, dir, upstream.url, { cache_dir: path.join(dir, 'a-file', 'cache') }), (error: unknown) => {
    assert.ok(isAutotestError(error, 'ERR_CONFIG'), String(error));
    assert.match(error.message, /\[SERVER\] cache_dir .*a-file\/cache: cannot be made a folder \(ENOTDIR\)/);
    assert.match(error.hint ?? '', /cache_dir/);
    return true;
  });
});
