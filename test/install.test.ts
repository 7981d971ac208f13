import assert from 'node:assert/strict';
import { access, cp, mkdir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import type { FetchSettings, Location } from '../src/config/index.js';
import { installPackages, MARKER_FILE } from '../src/client/install.js';
import { isAutotestError } from '../src/errors.js';
import { uploadPackages } from '../src/packager/index.js';
import { digestFile } from '../src/packages/index.js';
import { PackageFetcher } from '../src/fetch/index.js';
import { CLI, ROOT, copyExampleTree, mountTmpfs, runCli, tempDir } from './helpers.js';
// A free loopback port is one where nothing listens: connections to it are refused.
import { freePort } from './fixtures/process.js';
import { spawn } from 'node:child_process';
import { pathToFileURL } from 'node:url';

const FAST: FetchSettings = { connectTimeoutMs: 1000, timeoutMs: 2000, retries: 1, cooldownMs: 0, maxSizeBytes: 1e9 };
const PACKAGE = 'test-dbench.tar.bz2';

interface Repo {
  dir: string;
  clientDir: string;
}

/** Publishes the example client tree into dir/repo with the real packager. */
async function publishExample(t: TestContext): Promise<Repo> {
  const dir = await tempDir(t);
  const clientDir = await copyExampleTree(dir);
  const report = await uploadPackages({
    clientDir,
    selection: { all: true, tests: [], profilers: [], deps: [], client: false, files: [] },
    locations: [local(path.join(dir, 'repo'))],
    compression: 'bzip2',
    minimumFreeBytes: 0,
    cacheDir: path.join(dir, 'cache'),
  });
  assert.equal(report.ok, true);
  return { dir, clientDir };
}

function local(p: string): Location {
  return { kind: 'local', path: p, text: p };
}

function httpLocation(url: string): Location {
  return { kind: 'http', url, text: url };
}

type Fault = (file: string, request: http.IncomingMessage, response: http.ServerResponse, body: Buffer) => void;

interface FaultServer {
  url: string;
  requests: { file: string; range: string | undefined }[];
}

/** Our own HTTP server in front of a repository folder, misbehaving on purpose for package files. */
async function faultServer(t: TestContext, dir: string, fault: Fault | undefined, port = 0): Promise<FaultServer> {
  const requests: FaultServer['requests'] = [];
  const server = http.createServer((request, response) => {
    const file = decodeURIComponent((request.url ?? '/').replace(/^\/repo\//, ''));
    requests.push({ file, range: request.headers.range });
    void readFile(path.join(dir, file)).then(
      (body) => {
        if (fault && file.endsWith('.tar.bz2')) {
          fault(file, request, response, body);
          return;
        }
        response.writeHead(200, { 'content-length': body.length });
        response.end(body);
      },
      () => {
        response.writeHead(404).end();
      },
    );
  });
  await listen(t, server, port);
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port.toString()}/repo`, requests };
}

async function listen(t: TestContext, server: http.Server, port: number): Promise<void> {
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => {
          resolve();
        });
      }),
  );
}

/** A server that takes every connection and request and never answers: a stalled repository. */
async function silentServer(t: TestContext): Promise<string> {
  const server = http.createServer(() => undefined);
  await listen(t, server, 0);
  return `http://127.0.0.1:${(server.address() as AddressInfo).port.toString()}/repo`;
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  );
}

/** The installed folder holds exactly the package's files, with the marker of the indexed md5. */
async function assertInstalled(folder: string, clientDir: string, md5: string): Promise<void> {
  assert.equal((await readFile(path.join(folder, MARKER_FILE), 'utf8')).trim(), md5);
  assert.equal(await readFile(path.join(folder, 'dbench.mjs'), 'utf8'), await readFile(path.join(clientDir, 'tests', 'dbench', 'dbench.mjs'), 'utf8'));
  const siblings = await readdir(path.dirname(folder));
  assert.deepEqual(
    siblings.filter((name) => name.startsWith('.')),
    [],
    'no half-installed folder is left beside it',
  );
}

test('installs a package from the repositories, then skips it when its marker matches and uses the cache when only the folder is gone', async (t) => {
  const repo = await publishExample(t);
  const installDir = path.join(repo.dir, 'install');
  const options = { locations: [local(path.join(repo.dir, 'repo'))], settings: FAST, installDir };
  const md5 = (await digestFile(path.join(repo.dir, 'repo', PACKAGE))).md5;

  const [first] = await installPackages('test', ['dbench'], options);
  assert.equal(first?.action, 'fetched');
  assert.equal(first.bytes, (await stat(path.join(repo.dir, 'repo', PACKAGE))).size);
  await assertInstalled(path.join(installDir, 'tests', 'dbench'), repo.clientDir, md5);

  const [second] = await installPackages('test', ['dbench'], options);
  assert.equal(second?.action, 'up-to-date');
  assert.equal(second.bytes, 0);

  await rm(path.join(installDir, 'tests', 'dbench'), { recursive: true });
  const [third] = await installPackages('test', ['dbench'], options);
  assert.equal(third?.action, 'from-cache');
  await assertInstalled(path.join(installDir, 'tests', 'dbench'), repo.clientDir, md5);
});

const FAULTS: [string, Fault | 'refused'][] = [
  ['connection refused', 'refused'],
  ['accepts and never answers', () => undefined],
  [
    'resets in the middle of the body',
    (_file, _request, response, body) => {
      response.writeHead(200, { 'content-length': body.length });
      response.write(body.subarray(0, Math.floor(body.length / 2)), () => response.socket?.destroy());
    },
  ],
  [
    'answers 500',
    (_file, _request, response) => {
      response.writeHead(500).end('broken');
    },
  ],
  [
    'serves a corrupt package',
    (_file, _request, response, body) => {
      const corrupt = Buffer.from(body);
      corrupt[Math.floor(corrupt.length / 2)] = (corrupt[Math.floor(corrupt.length / 2)] ?? 0) ^ 0xff;
      response.writeHead(200, { 'content-length': corrupt.length });
      response.end(corrupt);
    },
  ],
  [
    'serves a truncated package',
    (_file, _request, response, body) => {
      const half = body.subarray(0, Math.floor(body.length / 2));
      response.writeHead(200, { 'content-length': half.length });
      response.end(half);
    },
  ],
];

for (const [name, fault] of FAULTS) {
  test(`a first repository that ${name} leads to a verified install from the second`, async (t) => {
    const repo = await publishExample(t);
    const repoDir = path.join(repo.dir, 'repo');
    const first =
      fault === 'refused' ? httpLocation(`http://127.0.0.1:${(await freePort()).toString()}/repo`) : httpLocation((await faultServer(t, repoDir, fault)).url);
    const installDir = path.join(repo.dir, 'install');
    const [record] = await installPackages('test', ['dbench'], { locations: [first, local(repoDir)], settings: FAST, installDir });
    assert.equal(record?.repository, repoDir, 'the package came from the second repository');
    await assertInstalled(path.join(installDir, 'tests', 'dbench'), repo.clientDir, (await digestFile(path.join(repoDir, PACKAGE))).md5);
    assert.deepEqual(
      await readdir(path.join(installDir, 'packages')).then((names) => names.filter((n) => n.endsWith('.tar.bz2'))),
      [PACKAGE],
      'only the verified tarball is in the cache',
    );
  });
}

/** A mirror's answer: the package, then bytes without end (bounded here at 64 MB), as a broken proxy sends. */
const endlessBody: Fault = (_file, _request, response, body) => {
  response.writeHead(200);
  response.write(body);
  const junk = Buffer.alloc(64 * 1024, 0x5a);
  let sent = 0;
  const more = (): void => {
    while (sent < 64 * 1024 * 1024 && !response.destroyed) {
      sent += junk.length;
      if (!response.write(junk)) {
        response.once('drain', more);
        return;
      }
    }
    response.end();
  };
  more();
};

/** The cache folder's leftovers of a fetch: partial downloads and their notes. */
async function partsIn(installDir: string): Promise<string[]> {
  return (await readdir(path.join(installDir, 'packages')).catch(() => [])).filter((n) => n.includes('.part'));
}

test('a mirror that sends a body longer than the index gives is cut at that size and passed over, and leaves no .part behind', async (t) => {
  const repo = await publishExample(t);
  const repoDir = path.join(repo.dir, 'repo');
  const mirror = await faultServer(t, repoDir, endlessBody);
  const installDir = path.join(repo.dir, 'install');
  const [record] = await installPackages('test', ['dbench'], { locations: [httpLocation(mirror.url), local(repoDir)], settings: FAST, installDir });
  assert.equal(record?.repository, repoDir);
  assert.match(record.passedOver.join('\n'), /sends more than the \d+ bytes its index gives; cut and discarded/);
  assert.deepEqual(await partsIn(installDir), []);
  await assertInstalled(path.join(installDir, 'tests', 'dbench'), repo.clientDir, (await digestFile(path.join(repoDir, PACKAGE))).md5);
});

test('from an Autotest repository (no sizes in its index) a download stops at fetch_max_size, or at the free space of a small package cache, which is left clean', async (t) => {
  const repo = await publishExample(t);
  // packages.checksum alone, as Autotest's packager writes it.
  const autotestRepo = path.join(repo.dir, 'autotest-repo');
  await mkdir(autotestRepo);
  for (const name of ['packages.checksum', PACKAGE]) await cp(path.join(repo.dir, 'repo', name), path.join(autotestRepo, name));
  const mirror = await faultServer(t, autotestRepo, endlessBody);
  const installDir = path.join(repo.dir, 'install');
  await assert.rejects(
    installPackages('test', ['dbench'], {
      locations: [httpLocation(mirror.url)],
      settings: { ...FAST, timeoutMs: 20_000, maxSizeBytes: 4 * 1024 * 1024 },
      installDir,
    }),
    (error: unknown) => isAutotestError(error, 'ERR_ALL_REPOSITORIES_FAILED') && /larger than fetch_max_size \(4194304 bytes\)/.test(error.message),
  );
  assert.deepEqual(await partsIn(installDir), []);

  // A package cache on a 2 MB file system: the body stops at its free space, never at ENOSPC.
  const small = await mountTmpfs(t, repo.dir, '2m');
  await assert.rejects(
    installPackages('test', ['dbench'], { locations: [httpLocation(mirror.url)], settings: { ...FAST, timeoutMs: 20_000 }, installDir: small }),
    (error: unknown) => isAutotestError(error, 'ERR_ALL_REPOSITORIES_FAILED') && /bytes free in the package cache/.test(error.message),
  );
  assert.deepEqual(await partsIn(small), [], 'nothing of the failed fetch is left in the cache');
  // The cache still takes a good package afterwards.
  const [record] = await installPackages('test', ['dbench'], { locations: [local(autotestRepo)], settings: FAST, installDir: small });
  assert.equal(record?.action, 'fetched');
});

test('fetch_timeout is one budget for a package from one repository: a mirror trickling a byte a second gets one try, not one per retry', async (t) => {
  const repo = await publishExample(t);
  const repoDir = path.join(repo.dir, 'repo');
  const mirror = await faultServer(t, repoDir, (_file, _request, response, body) => {
    response.writeHead(200, { 'content-length': body.length });
    let at = 0;
    const timer = setInterval(() => {
      if (response.destroyed || at >= body.length) clearInterval(timer);
      else response.write(body.subarray(at, (at += 1)));
    }, 1000);
    response.on('close', () => {
      clearInterval(timer);
    });
  });
  const installDir = path.join(repo.dir, 'install');
  const [record] = await installPackages('test', ['dbench'], {
    locations: [httpLocation(mirror.url), local(repoDir)],
    settings: { ...FAST, timeoutMs: 2500, retries: 2 },
    installDir,
  });
  assert.equal(record?.repository, repoDir);
  assert.match(record.passedOver.join('\n'), /not complete within 2\.5 s \(fetch_timeout/);
  assert.equal(mirror.requests.filter((r) => r.file === PACKAGE).length, 1, 'no retry once the budget is spent');
});

test('an index with a malformed line, a name too long and a file listed twice with two checksums still serves its good entries, each bad line named as a warning, and verify --repair rewrites it clean', async (t) => {
  const repo = await publishExample(t);
  const repoDir = path.join(repo.dir, 'repo');
  const checksum = path.join(repoDir, 'packages.checksum');
  const good = await readFile(checksum, 'utf8');
  const dep = /^[0-9a-f]{32} {2}dep-libaio\.tar\.bz2$/m.exec(good)?.[0] ?? '';
  assert.notEqual(dep, '');
  await writeFile(checksum, `${good}this is not an md5sum line\n${'0'.repeat(32)}  test-${'x'.repeat(250)}.tar.bz2\n${'1'.repeat(32)}  dep-libaio.tar.bz2\n`);
  // The manifest agrees with none of that: what it lists alone is kept, checked by its sha256.
  await rm(path.join(repoDir, 'packages.json'));
  const config = path.join(repo.dir, 'global_config.ini');
  await writeFile(config, `[PACKAGES]\nfetch_location: ${repoDir}\nupload_location: ${repoDir}\nminimum_free_space: 0\nclient_dir: ${repo.clientDir}\n`);
  const install = await runCli(['client', 'install', 'test', 'dbench', '--config', config, '--install-dir', path.join(repo.dir, 'install')], { cwd: repo.dir });
  assert.equal(install.code, 0, install.stderr);
  assert.match(install.stderr, /packages\.checksum:\d+: not an md5sum line, left out/);
  assert.match(install.stderr, /packages\.checksum:\d+: file name refused, left out: .*at most 200/);
  assert.match(install.stderr, /dep-libaio\.tar\.bz2 is listed again with another checksum; it is left out/);
  const ambiguous = await runCli(['client', 'install', 'dep', 'libaio', '--config', config, '--install-dir', path.join(repo.dir, 'install')], {
    cwd: repo.dir,
  });
  assert.equal(ambiguous.code, 1, 'an entry listed with two checksums is not believed');

  const verify = await runCli(['packager', 'verify', '--config', config], { cwd: repo.dir });
  assert.equal(verify.code, 1);
  assert.match(verify.stdout, /not an md5sum line/);
  const repair = await runCli(['packager', 'verify', '--repair', '--config', config], { cwd: repo.dir });
  assert.equal(repair.code, 0, repair.stdout + repair.stderr);
  const repaired = await readFile(checksum, 'utf8');
  assert.doesNotMatch(repaired, /not an md5sum line|x{250}|^1{32}/m);
  assert.match(repaired, new RegExp(dep.replaceAll('.', '\\.')), 'the republished dep is listed once, with its right checksum');
});

test('a junk index gives at most 20 problems and how many more, and one with no readable entry (an HTML page) is a failed repository, not one that lacks the package', async (t) => {
  const repo = await publishExample(t);
  const repoDir = path.join(repo.dir, 'repo');
  const good = await readFile(path.join(repoDir, 'packages.checksum'), 'utf8');
  await writeFile(path.join(repoDir, 'packages.checksum'), `${good}${'junk\n'.repeat(1000)}`);
  const warnings: string[] = [];
  const [record] = await installPackages('test', ['dbench'], {
    locations: [local(repoDir)],
    settings: FAST,
    installDir: path.join(repo.dir, 'install'),
    onWarning: (m) => warnings.push(m),
  });
  assert.equal(record?.action, 'fetched');
  assert.equal(warnings.length, 21);
  assert.equal(warnings[20], 'and 980 more problems');

  const page = await faultServer(t, path.join(repo.dir, 'www'), undefined);
  await mkdir(path.join(repo.dir, 'www'));
  await writeFile(path.join(repo.dir, 'www', 'packages.checksum'), '<html><body>Welcome to nginx!</body></html>\n');
  const [second] = await installPackages('test', ['dbench'], {
    locations: [httpLocation(page.url), local(repoDir)],
    settings: FAST,
    installDir: path.join(repo.dir, 'install2'),
  });
  assert.equal(second?.repository, repoDir);
  assert.match(second.passedOver.join('\n'), /packages\.checksum has no readable entry \(.*not an md5sum line/);
});

test('a mirror that sends every byte the index gives and then stalls is not waited for: the package is verified and installed from it', async (t) => {
  const repo = await publishExample(t);
  const repoDir = path.join(repo.dir, 'repo');
  const mirror = await faultServer(t, repoDir, (_file, _request, response, body) => {
    // Announces more than it sends, then holds the connection open.
    response.writeHead(200, { 'content-length': body.length + 10 });
    response.write(body);
  });
  const [record] = await installPackages('test', ['dbench'], {
    locations: [httpLocation(mirror.url)],
    settings: { ...FAST, timeoutMs: 60_000 },
    installDir: path.join(repo.dir, 'install'),
  });
  assert.equal(record?.repository, mirror.url);
  assert.deepEqual(record.passedOver, []);
  await assertInstalled(path.join(repo.dir, 'install', 'tests', 'dbench'), repo.clientDir, (await digestFile(path.join(repoDir, PACKAGE))).md5);
});

test('a packages.json that does not parse leaves packages.checksum (md5) to decide, with a warning naming it', async (t) => {
  const repo = await publishExample(t);
  const repoDir = path.join(repo.dir, 'repo');
  await writeFile(path.join(repoDir, 'packages.json'), '{"version": 1, "packages": {');
  const warnings: string[] = [];
  const [record] = await installPackages('test', ['dbench'], {
    locations: [local(repoDir)],
    settings: FAST,
    installDir: path.join(repo.dir, 'install'),
    onWarning: (m) => warnings.push(m),
  });
  assert.equal(record?.action, 'fetched');
  assert.equal(warnings.length, 1, warnings.join('\n'));
  assert.match(warnings[0] ?? '', /packages\.json: not valid JSON .*; using packages\.checksum alone \(md5\)/);
});

test('a download cut half way resumes from where it stopped on the next try, asking only for the missing bytes', async (t) => {
  const repo = await publishExample(t);
  const repoDir = path.join(repo.dir, 'repo');
  let cut = true;
  const server = await faultServer(t, repoDir, (_file, request, response, body) => {
    const half = Math.floor(body.length / 2);
    if (cut) {
      cut = false;
      // The connection closes after half the body (a FIN: a reset could drop bytes in flight).
      response.writeHead(200, { 'content-length': body.length });
      response.write(body.subarray(0, half), () => response.socket?.end());
      return;
    }
    const match = /^bytes=(\d+)-$/.exec(request.headers.range ?? '');
    const start = match ? Number(match[1]) : 0;
    response.writeHead(match ? 206 : 200, {
      'content-length': body.length - start,
      ...(match ? { 'content-range': `bytes ${start.toString()}-${(body.length - 1).toString()}/${body.length.toString()}` } : {}),
    });
    response.end(body.subarray(start));
  });
  const installDir = path.join(repo.dir, 'install');
  // No retry within the first install: the resume happens in the next one, as after a crash.
  await assert.rejects(
    installPackages('test', ['dbench'], { locations: [httpLocation(server.url)], settings: { ...FAST, retries: 0 }, installDir }),
    (error: unknown) => isAutotestError(error, 'ERR_ALL_REPOSITORIES_FAILED') && /broke off|cut short|premature|aborted/i.test(error.message),
  );
  const size = (await stat(path.join(repoDir, PACKAGE))).size;
  const [record] = await installPackages('test', ['dbench'], { locations: [httpLocation(server.url)], settings: FAST, installDir });
  const packageRequests = server.requests.filter((r) => r.file === PACKAGE);
  assert.equal(packageRequests.length, 2);
  assert.equal(packageRequests[0]?.range, undefined);
  const resumedAt = Number(/^bytes=(\d+)-$/.exec(packageRequests[1]?.range ?? '')?.[1]);
  assert.ok(resumedAt > 0 && resumedAt <= Math.floor(size / 2), `resumed at ${String(resumedAt)} of ${size.toString()}`);
  assert.equal(record?.bytes, size - resumedAt, 'only the missing bytes were moved');
  await assertInstalled(path.join(installDir, 'tests', 'dbench'), repo.clientDir, (await digestFile(path.join(repoDir, PACKAGE))).md5);
});

test('when every repository fails, one error names each repository and why, and a refused connection, a 404 and a missing folder do not skip the repository on the next run', async (t) => {
  const repo = await publishExample(t);
  const refused = httpLocation(`http://127.0.0.1:${(await freePort()).toString()}/repo`);
  const server = await faultServer(t, path.join(repo.dir, 'repo'), (_f, _r, response) => {
    response.writeHead(404).end();
  });
  const missing = local(path.join(repo.dir, 'nowhere'));
  const options = {
    locations: [refused, httpLocation(server.url), missing],
    settings: { ...FAST, cooldownMs: 60_000 },
    installDir: path.join(repo.dir, 'install'),
  };
  for (const run of ['first', 'second']) {
    await assert.rejects(installPackages('test', ['dbench'], options), (error: unknown) => {
      assert.ok(isAutotestError(error, 'ERR_ALL_REPOSITORIES_FAILED'));
      assert.match(error.message, new RegExp(`${refused.text.replace(/[.]/g, '\\.')}.*cannot connect \\(ECONNREFUSED\\)`), run);
      assert.match(error.message, /not found \(404\)/);
      assert.match(error.message, /nowhere: cannot read its index|nowhere: has no packages\.checksum/);
      assert.doesNotMatch(error.message, /skipped for/, `${run} run: every repository was tried`);
      return true;
    });
  }
});

test('a repository refused on one install serves the next install as soon as it is started, with no cool-down in between', async (t) => {
  const repo = await publishExample(t);
  const port = await freePort();
  const location = httpLocation(`http://127.0.0.1:${port.toString()}/repo`);
  const options = { locations: [location], settings: { ...FAST, cooldownMs: 60_000 }, installDir: path.join(repo.dir, 'install') };
  await assert.rejects(
    installPackages('test', ['dbench'], options),
    (error: unknown) => isAutotestError(error, 'ERR_ALL_REPOSITORIES_FAILED') && /ECONNREFUSED/.test(error.message),
  );
  await faultServer(t, path.join(repo.dir, 'repo'), undefined, port);
  const [record] = await installPackages('test', ['dbench'], options);
  assert.equal(record?.repository, location.text);
  assert.deepEqual(record.passedOver, []);
});

test('a repository that accepts the connection but stalls is skipped by the next install while it cools down, and the next repository serves both', async (t) => {
  const repo = await publishExample(t);
  const stalling = await silentServer(t);
  const options = {
    locations: [httpLocation(stalling), local(path.join(repo.dir, 'repo'))],
    settings: { ...FAST, retries: 0, cooldownMs: 60_000 },
    installDir: path.join(repo.dir, 'install'),
  };
  const [first] = await installPackages('test', ['dbench'], options);
  assert.equal(first?.repository, path.join(repo.dir, 'repo'));
  assert.match(first.passedOver.join('\n'), /no data for \d+ s|not complete within/);
  await rm(path.join(repo.dir, 'install', 'tests'), { recursive: true });
  const [second] = await installPackages('test', ['dbench'], options);
  assert.match(second?.passedOver.join('\n') ?? '', /skipped for \d+ s more \(fetch_cooldown\) after: .*(no data for|not complete within)/);
});

test('a package that is in no index is an error naming the package, never a silent success', async (t) => {
  const repo = await publishExample(t);
  await assert.rejects(
    installPackages('test', ['nosuchtest'], { locations: [local(path.join(repo.dir, 'repo'))], settings: FAST, installDir: path.join(repo.dir, 'i') }),
    (error: unknown) => isAutotestError(error, 'ERR_ALL_REPOSITORIES_FAILED') && error.message.includes('test-nosuchtest.tar.bz2'),
  );
  await assert.rejects(
    installPackages('test', ['../etc'], { locations: [local(path.join(repo.dir, 'repo'))], settings: FAST, installDir: path.join(repo.dir, 'i') }),
    (error: unknown) => isAutotestError(error, 'ERR_BAD_NAME'),
  );
});

function runInstallProcess(args: string[], cwd: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'client', 'install', ...args], {
      cwd,
      env: { ...process.env, AUTOTEST_CONFIG: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.on('error', reject);
    child.on('close', (code) => {
      resolve({ code, stdout, stderr });
    });
  });
}

test('10 processes installing the same package at once fetch it once and extract it once, and all succeed', async (t) => {
  const repo = await publishExample(t);
  const server = await faultServer(t, path.join(repo.dir, 'repo'), undefined);
  const installDir = path.join(repo.dir, 'install');
  const results = await Promise.all(
    Array.from({ length: 10 }, () => runInstallProcess(['test', 'dbench', '--install-dir', installDir, '-r', server.url, '--json'], repo.dir)),
  );
  for (const result of results) assert.equal(result.code, 0, result.stderr);
  const actions = results.map((r) => (JSON.parse(r.stdout) as { action: string }[])[0]?.action).sort();
  assert.deepEqual(actions, ['fetched', ...Array<string>(9).fill('up-to-date')]);
  assert.equal(server.requests.filter((r) => r.file === PACKAGE).length, 1, 'one fetch of the package');
  await assertInstalled(path.join(installDir, 'tests', 'dbench'), repo.clientDir, (await digestFile(path.join(repo.dir, 'repo', PACKAGE))).md5);
});

test('an installer killed at random moments leaves the old or the new package, never a mix, and the next install completes', async (t) => {
  const repo = await publishExample(t);
  const repoDir = path.join(repo.dir, 'repo');
  const installDir = path.join(repo.dir, 'install');
  const folder = path.join(installDir, 'tests', 'dbench');
  const oldMd5 = (await digestFile(path.join(repoDir, PACKAGE))).md5;
  const oldRepo = path.join(repo.dir, 'old-repo');
  await cp(repoDir, oldRepo, { recursive: true });
  // A new version of the package, so that each trial replaces an installed one.
  const module = path.join(repo.clientDir, 'tests', 'dbench', 'dbench.mjs');
  await writeFile(module, `${await readFile(module, 'utf8')}// version 2\n`);
  const report = await uploadPackages({
    clientDir: repo.clientDir,
    selection: { all: false, tests: ['dbench'], profilers: [], deps: [], client: false, files: [] },
    locations: [local(repoDir)],
    compression: 'bzip2',
    minimumFreeBytes: 0,
    cacheDir: path.join(repo.dir, 'cache'),
  });
  assert.equal(report.ok, true);
  const newMd5 = (await digestFile(path.join(repoDir, PACKAGE))).md5;
  assert.notEqual(newMd5, oldMd5);
  for (let trial = 0; trial < 6; trial += 1) {
    // The old version installed, with an empty cache, so each trial fetches, extracts and swaps.
    const previous = await runInstallProcess(['test', 'dbench', '--install-dir', installDir, '-r', oldRepo], repo.dir);
    assert.equal(previous.code, 0, previous.stderr);
    assert.equal((await readFile(path.join(folder, MARKER_FILE), 'utf8')).trim(), oldMd5);
    await rm(path.join(installDir, 'packages'), { recursive: true, force: true });
    const child = spawn(process.execPath, [CLI, 'client', 'install', 'test', 'dbench', '--install-dir', installDir, '-r', repoDir], {
      cwd: repo.dir,
      env: { ...process.env, AUTOTEST_CONFIG: '' },
      stdio: 'ignore',
    });
    const closed = new Promise<void>((resolve) =>
      child.on('close', () => {
        resolve();
      }),
    );
    setTimeout(() => child.kill('SIGKILL'), 60 + Math.floor(Math.random() * 400));
    await closed;
    const marker = await readFile(path.join(folder, MARKER_FILE), 'utf8').then(
      (s) => s.trim(),
      () => undefined,
    );
    if (marker !== undefined) {
      assert.ok(marker === oldMd5 || marker === newMd5, `trial ${trial.toString()}: marker ${marker}`);
      const installed = await readFile(path.join(folder, 'dbench.mjs'), 'utf8');
      assert.equal(installed.includes('// version 2'), marker === newMd5, `trial ${trial.toString()}: the files are those of the marker's version`);
    } else {
      // Killed between the two renames: the old folder waits beside it, whole, for the next install.
      const aside = (await readdir(path.dirname(folder))).filter((n) => n.startsWith('.dbench.old.'));
      assert.equal(aside.length, 1, `trial ${trial.toString()}: neither the folder nor the old one aside`);
    }
    const next = await runInstallProcess(['test', 'dbench', '--install-dir', installDir, '-r', repoDir], repo.dir);
    assert.equal(next.code, 0, next.stderr);
    await assertInstalled(folder, repo.clientDir, newMd5);
  }
  assert.equal(await exists(path.join(installDir, 'packages', `${PACKAGE}.part`)), false);
});

test('a large package is verified on the hashing thread: a corrupt copy is refused and a good one from the next repository lands', async (t) => {
  const dir = await tempDir(t);
  const big = path.join(dir, 'kernel-9m.img');
  await writeFile(big, Buffer.alloc(9 * 1024 * 1024, 7));
  const repos = [path.join(dir, 'a'), path.join(dir, 'b')];
  const report = await uploadPackages({
    clientDir: await copyExampleTree(dir),
    selection: { all: false, tests: [], profilers: [], deps: [], client: false, files: [big] },
    locations: repos.map(local),
    compression: 'bzip2',
    minimumFreeBytes: 0,
    cacheDir: path.join(dir, 'cache'),
  });
  assert.equal(report.ok, true);
  const corrupt = Buffer.alloc(9 * 1024 * 1024, 7);
  corrupt[5_000_000] = 8;
  await writeFile(path.join(repos[0] ?? '', 'kernel-9m.img'), corrupt);
  const fetcher = await PackageFetcher.create(repos.map(local), FAST);
  const dest = path.join(dir, 'out', 'kernel-9m.img');
  const fetched = await fetcher.fetch('kernel-9m.img', dest);
  assert.equal(fetched.repository, repos[1]);
  assert.equal((await digestFile(dest)).sha256, (await digestFile(big)).sha256);
  await assert.rejects(
    fetcher.fetch('kernel-9m.img', path.join(dir, 'out2', 'x')).then(async () => {
      await writeFile(path.join(repos[1] ?? '', 'kernel-9m.img'), corrupt);
      return (await PackageFetcher.create(repos.map(local), FAST)).fetch('kernel-9m.img', path.join(dir, 'out3', 'x'));
    }),
    (error: unknown) => isAutotestError(error, 'ERR_ALL_REPOSITORIES_FAILED') && (error.message.match(/does not match its index/g) ?? []).length === 2,
  );
  assert.equal(await exists(path.join(dir, 'out3', 'x')), false, 'a corrupt package never lands');
});

test('the marker names the version really installed when the first repository lists another one it cannot serve', async (t) => {
  const repo = await publishExample(t);
  const older = path.join(repo.dir, 'older');
  await cp(path.join(repo.dir, 'repo'), older, { recursive: true });
  const module = path.join(repo.clientDir, 'tests', 'dbench', 'dbench.mjs');
  await writeFile(module, `${await readFile(module, 'utf8')}// version 2\n`);
  const newer = path.join(repo.dir, 'repo');
  const report = await uploadPackages({
    clientDir: repo.clientDir,
    selection: { all: false, tests: ['dbench'], profilers: [], deps: [], client: false, files: [] },
    locations: [local(newer)],
    compression: 'bzip2',
    minimumFreeBytes: 0,
    cacheDir: path.join(repo.dir, 'cache'),
  });
  assert.equal(report.ok, true);
  await writeFile(path.join(newer, PACKAGE), 'damaged');
  const installDir = path.join(repo.dir, 'install');
  const [record] = await installPackages('test', ['dbench'], { locations: [local(newer), local(older)], settings: FAST, installDir });
  const olderMd5 = (await digestFile(path.join(older, PACKAGE))).md5;
  assert.equal(record?.repository, older);
  assert.equal(record.md5, olderMd5);
  assert.equal((await readFile(path.join(installDir, 'tests', 'dbench', MARKER_FILE), 'utf8')).trim(), olderMd5);
  const [again] = await installPackages('test', ['dbench'], { locations: [local(newer), local(older)], settings: FAST, installDir });
  assert.notEqual(again?.action, 'up-to-date', 'the older version is never taken for the newer one');
});

test('a partial download that is already whole is verified without a request, and a server refusing the range (416) is fetched again from the start', async (t) => {
  const repo = await publishExample(t);
  const repoDir = path.join(repo.dir, 'repo');
  const body = await readFile(path.join(repoDir, PACKAGE));
  const server = await faultServer(t, repoDir, (_file, request, response) => {
    if (request.headers.range) response.writeHead(416).end();
    else response.writeHead(200, { 'content-length': body.length }).end(body);
  });
  const fetcher = await PackageFetcher.create([httpLocation(server.url)], FAST);
  const { entry } = await fetcher.lookup([PACKAGE]);
  const identity = JSON.stringify({ md5: entry.md5, sha256: entry.sha256 ?? null, size: entry.size ?? null });
  const whole = path.join(repo.dir, 'cache1', PACKAGE);
  await mkdir(path.dirname(whole), { recursive: true });
  await writeFile(`${whole}.part`, body);
  await writeFile(`${whole}.part.json`, identity);
  assert.equal((await fetcher.fetch(PACKAGE, whole)).bytes, 0);
  assert.equal(server.requests.filter((r) => r.file === PACKAGE).length, 0, 'no request for a whole part');

  const half = path.join(repo.dir, 'cache2', PACKAGE);
  await mkdir(path.dirname(half), { recursive: true });
  await writeFile(`${half}.part`, body.subarray(0, 100));
  await writeFile(`${half}.part.json`, identity);
  const fetched = await fetcher.fetch(PACKAGE, half);
  assert.equal(fetched.bytes, body.length, 'fetched again from the first byte');
  assert.deepEqual(
    server.requests.filter((r) => r.file === PACKAGE).map((r) => r.range),
    ['bytes=100-', undefined],
  );
  assert.deepEqual(await readFile(half), body);
});

/**
 * Another process makes an installer's new folder beside `folder`, named as swapIn names it,
 * with a half-written file in it, and stays alive; the test kills it (kill -9) or it is killed
 * when the test ends.
 */
async function otherInstallerFolder(t: TestContext, folder: string): Promise<{ path: string; kill: () => Promise<void> }> {
  const atomic = pathToFileURL(path.join(ROOT, 'dist/src/fs/atomic.js')).href;
  const script = `import { tempPathFor } from ${JSON.stringify(atomic)};
import { mkdirSync, writeFileSync } from 'node:fs';
const fresh = tempPathFor(process.argv[1]);
mkdirSync(fresh, { recursive: true });
writeFileSync(fresh + '/half.txt', 'half');
process.stdout.write(fresh + '\\n');
process.stdin.resume();`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script, folder], { stdio: ['pipe', 'pipe', 'inherit'] });
  const closed = new Promise<void>((resolve) =>
    child.on('close', () => {
      resolve();
    }),
  );
  t.after(async () => {
    child.kill('SIGKILL');
    await closed;
  });
  const made = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk;
      if (out.endsWith('\n')) resolve(out.trim());
    });
    child.on('close', () => {
      reject(new Error('the helper process ended before making its folder'));
    });
  });
  return {
    path: made,
    kill: async () => {
      child.kill('SIGKILL');
      await closed;
    },
  };
}

test('the next install of any package removes the new folder of an installer killed mid-extraction, never that of a live one', async (t) => {
  const repo = await publishExample(t);
  const installDir = path.join(repo.dir, 'install');
  const tests = path.join(installDir, 'tests');
  const killed = await otherInstallerFolder(t, path.join(tests, 'dbench'));
  const live = await otherInstallerFolder(t, path.join(tests, 'hello'));
  await killed.kill();
  assert.equal(path.dirname(killed.path), tests);
  assert.match(path.basename(killed.path), /^\.tmp\.[^.]+\.\d+\.[0-9a-f]{8}\.dbench$/, 'tagged with host and pid');

  const [record] = await installPackages('test', ['sleeptest'], { locations: [local(path.join(repo.dir, 'repo'))], settings: FAST, installDir });
  assert.equal(record?.action, 'fetched');
  assert.equal(await exists(killed.path), false, "the dead installer's half folder is gone");
  assert.equal(await readFile(path.join(live.path, 'half.txt'), 'utf8'), 'half', "the live installer's folder is untouched");
  assert.deepEqual((await readdir(tests)).sort(), [path.basename(live.path), 'sleeptest'].sort());
});

test('a package with a name as long as allowed installs on a host with a 63-character name: the tagged new folder fits NAME_MAX', async (t) => {
  const repo = await publishExample(t);
  const { MAX_PACKAGE_NAME_LENGTH } = await import('../src/packages/index.js');
  const name = 'n'.repeat(MAX_PACKAGE_NAME_LENGTH);
  await mkdir(path.join(repo.clientDir, 'tests', name));
  await writeFile(path.join(repo.clientDir, 'tests', name, 'control'), 'job.run_test("long")\n');
  const report = await uploadPackages({
    clientDir: repo.clientDir,
    selection: { all: false, tests: [name], profilers: [], deps: [], client: false, files: [] },
    locations: [local(path.join(repo.dir, 'repo'))],
    compression: 'bzip2',
    minimumFreeBytes: 0,
    cacheDir: path.join(repo.dir, 'cache'),
  });
  assert.equal(report.ok, true);
  const installDir = path.join(repo.dir, 'install');
  // A host name of its own, in a UTS namespace of the installer alone.
  const result = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
    const child = spawn(
      'unshare',
      [
        '--uts',
        'sh',
        '-c',
        'hostname "$0" && exec "$@"',
        'h'.repeat(63),
        process.execPath,
        CLI,
        'client',
        'install',
        'test',
        name,
        '--install-dir',
        installDir,
        '-r',
        path.join(repo.dir, 'repo'),
      ],
      { cwd: repo.dir, env: { ...process.env, AUTOTEST_CONFIG: '' }, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.on('error', reject);
    child.on('close', (code) => {
      resolve({ code, stderr });
    });
  });
  assert.equal(result.code, 0, result.stderr);
  assert.equal(await readFile(path.join(installDir, 'tests', name, 'control'), 'utf8'), 'job.run_test("long")\n');
});
