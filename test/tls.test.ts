import assert from 'node:assert/strict';
import { mkdir, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { startNginx, type NginxServer } from './fixtures/nginx.js';
import { createTestCa, type TestCa } from './fixtures/tls.js';
import { copyExampleTree, pathWithout, ROOT, runCli, tempDir, writeConfig, type CliResult } from './helpers.js';

interface TlsLab {
  dir: string;
  ca: TestCa;
  /** nginx serving dir/www over HTTPS with the lab's certificate, to clients whose certificate the lab CA signed. */
  nginx: NginxServer;
  /** https URL of the published repository. */
  url: string;
}

/** The example tree published to dir/www/builtin, served by nginx over HTTPS with `ssl_verify_client on`. */
async function tlsLab(t: TestContext, extraLocations?: string): Promise<TlsLab> {
  const dir = await tempDir(t);
  const ca = await createTestCa(await tempDir(t, 'autotest-ca-'));
  const clientDir = await copyExampleTree(dir);
  const builtin = path.join(dir, 'www', 'builtin');
  await mkdir(builtin, { recursive: true });
  const publish = await runCli(
    [
      'packager',
      'upload',
      '--all',
      '--config',
      await writeConfig(dir, { upload_location: builtin, client_dir: clientDir, minimum_free_space: '0' }, 'publish.ini'),
    ],
    { cwd: dir },
  );
  assert.equal(publish.code, 0, publish.stderr);
  const nginx = await startNginx({ root: path.join(dir, 'www'), tls: { cert: ca.serverCert, key: ca.serverKey, clientCa: ca.caFile }, extraLocations });
  t.after(() => nginx.stop());
  return { dir, ca, nginx, url: `${nginx.url}/builtin` };
}

function install(lab: TlsLab, config: string, installDir = 'install', env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return runCli(['client', 'install', 'test', 'sleeptest', '--config', config, '--install-dir', path.join(lab.dir, installDir)], { cwd: lab.dir, env });
}

/** The repository paths nginx answered 200, from its access log. */
async function servedPaths(nginx: NginxServer): Promise<string[]> {
  const log = await readFile(nginx.accessLog, 'utf8');
  return [...log.matchAll(/"GET (\S+) HTTP\/[\d.]+" 200 /g)].map((m) => m[1] ?? '');
}

test("client install fetches from an https repository of the lab's own CA that verifies client certificates, with fetch_ca_file, fetch_client_cert and fetch_client_key", async (t) => {
  const lab = await tlsLab(t);
  const config = await writeConfig(lab.dir, {
    fetch_location: lab.url,
    fetch_ca_file: lab.ca.caFile,
    fetch_client_cert: lab.ca.clientCert,
    fetch_client_key: lab.ca.clientKey,
  });
  const result = await install(lab, config);
  assert.equal(result.code, 0, result.stdout + result.stderr);
  assert.match(result.stdout, new RegExp(`test sleeptest: fetched \\(test-sleeptest\\.tar\\.bz2 from ${lab.url.replace(/[.]/g, '\\.')}`));
  assert.ok((await readdir(path.join(lab.dir, 'install', 'tests', 'sleeptest'))).includes('sleeptest.mjs'));
  assert.ok((await servedPaths(lab.nginx)).includes('/builtin/test-sleeptest.tar.bz2'));
});

test('a TLS failure (the lab CA not trusted) is reported with a hint naming fetch_ca_file, and the install right after fetch_ca_file is set succeeds', async (t) => {
  const lab = await tlsLab(t);
  const keys = { fetch_location: lab.url, fetch_client_cert: lab.ca.clientCert, fetch_client_key: lab.ca.clientKey, fetch_cooldown: '60' };
  const untrusted = await install(lab, await writeConfig(lab.dir, keys, 'no-ca.ini'));
  assert.equal(untrusted.code, 1, untrusted.stdout + untrusted.stderr);
  assert.match(untrusted.stderr, /TLS failed \((UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|SELF_SIGNED_CERT_IN_CHAIN)\)/);
  assert.match(untrusted.stderr, /fetch_ca_file/);
  // Same install folder, so the same package cache and its record of repository health.
  const fixed = await install(lab, await writeConfig(lab.dir, { ...keys, fetch_ca_file: lab.ca.caFile }, 'with-ca.ini'));
  assert.equal(fixed.code, 0, fixed.stdout + fixed.stderr);
  assert.doesNotMatch(fixed.stderr, /skipped for/);
  assert.match(fixed.stdout, /test sleeptest: fetched/);
});

test('a server that verifies clients turns away an install without a client certificate, the hint names fetch_client_cert, and the next repository serves', async (t) => {
  const lab = await tlsLab(t);
  const config = await writeConfig(lab.dir, { fetch_location: `${lab.url}, ${path.join(lab.dir, 'www', 'builtin')}`, fetch_ca_file: lab.ca.caFile });
  const result = await install(lab, config);
  assert.equal(result.code, 0, result.stdout + result.stderr);
  assert.match(
    result.stderr,
    /passed over https:\/\/127\.0\.0\.1:\d+\/builtin\/packages\.checksum: the server answered 400 \(.*fetch_client_cert and fetch_client_key/,
  );
  assert.match(result.stdout, /test sleeptest: fetched .* from \//);
});

test('an s3:// repository behind an https endpoint of the lab CA is fetched with fetch_ca_file and the client certificate', async (t) => {
  const lab = await tlsLab(t);
  // nginx stands in for the endpoint: path-style GETs of /BUCKET/KEY are files under www (it ignores the signature).
  await symlink(path.join(lab.dir, 'www', 'builtin'), path.join(lab.dir, 'www', 'lab-bucket'));
  const result = await install(lab, await writeS3Config(lab, 's3://lab-bucket'), 'install', s3Env(lab));
  assert.equal(result.code, 0, result.stdout + result.stderr);
  assert.match(result.stdout, /test sleeptest: fetched \(test-sleeptest\.tar\.bz2 from s3:\/\/lab-bucket/);
  assert.ok((await servedPaths(lab.nginx)).includes('/lab-bucket/test-sleeptest.tar.bz2'));
});

/** A config whose fetch_location is `locations`, with the lab's TLS files and its nginx as the S3 endpoint. */
async function writeS3Config(lab: TlsLab, locations: string, extra: string[] = []): Promise<string> {
  const config = path.join(lab.dir, 's3.ini');
  await writeFile(
    config,
    [
      '[PACKAGES]',
      `fetch_location: ${locations}`,
      `fetch_ca_file: ${lab.ca.caFile}`,
      `fetch_client_cert: ${lab.ca.clientCert}`,
      `fetch_client_key: ${lab.ca.clientKey}`,
      ...extra,
      '[S3]',
      `endpoint: ${lab.nginx.url}`,
      '',
    ].join('\n'),
  );
  return config;
}

/** Keys to sign with (nginx does not check them), and no other credential source. */
function s3Env(lab: TlsLab): NodeJS.ProcessEnv {
  return {
    AWS_ACCESS_KEY_ID: 'lab',
    AWS_SECRET_ACCESS_KEY: 'lab-secret',
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_SHARED_CREDENTIALS_FILE: path.join(lab.dir, 'none'),
    AWS_CONFIG_FILE: path.join(lab.dir, 'none'),
  };
}

test('S3 AccessDenied and NoSuchBucket answers pass over to the next repository but do not skip those buckets on the next install', async (t) => {
  const lab = await tlsLab(
    t,
    [
      'location /denied-bucket/ { return 403 \'<?xml version="1.0"?><Error><Code>AccessDenied</Code></Error>\'; }',
      'location /missing-bucket/ { return 404 \'<?xml version="1.0"?><Error><Code>NoSuchBucket</Code></Error>\'; }',
    ].join('\n'),
  );
  const config = await writeS3Config(lab, `s3://denied-bucket, s3://missing-bucket, ${path.join(lab.dir, 'www', 'builtin')}`, ['fetch_cooldown: 60']);
  // Both installs use one install folder, so one package cache and its record of repository health.
  for (const run of ['first', 'second']) {
    const result = await install(lab, config, 'install', s3Env(lab));
    assert.equal(result.code, 0, `${run}: ${result.stdout}${result.stderr}`);
    assert.match(result.stderr, /passed over s3:\/\/denied-bucket\S*: access denied \(AccessDenied, 403\)/);
    assert.match(result.stderr, /passed over s3:\/\/missing-bucket\S*: the bucket does not exist \(NoSuchBucket\)/);
    assert.doesNotMatch(result.stderr, /skipped for/);
    await rm(path.join(lab.dir, 'install', 'tests'), { recursive: true });
  }
});

interface HostSummary {
  clientInstall: string;
  why: string[];
  status: string;
  tests: { name: string; status: string }[];
}

for (const tool of ['curl', 'wget'] as const) {
  test(`autoserv installs the client by packaging from an https repository that verifies clients, ${tool} getting the CA bundle autoserv sent and the host's own certificate, and the job fetches its tests there too`, async (t) => {
    const lab = await tlsLab(t);
    // The host's certificate lives on the host, where autoserv's config names it; autoserv never reads it.
    const config = await writeConfig(lab.dir, {
      fetch_location: lab.url,
      fetch_ca_file: lab.ca.caFile,
      fetch_client_cert: lab.ca.clientCert,
      fetch_client_key: lab.ca.clientKey,
    });
    const env: NodeJS.ProcessEnv = tool === 'wget' ? { PATH: await pathWithout(lab.dir, 'curl') } : {};
    const hostDir = path.join(lab.dir, 'host');
    const result = await runCli(
      [
        'autoserv',
        '-m',
        'localhost',
        '-r',
        path.join(lab.dir, 'results'),
        '--config',
        config,
        '--host-dir',
        hostDir,
        path.join(ROOT, 'example', 'jobs', 'example.control.mjs'),
      ],
      { cwd: lab.dir, env },
    );
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const [summary] = JSON.parse(await readFile(path.join(lab.dir, 'results', 'summary.json'), 'utf8')) as HostSummary[];
    assert.equal(summary?.clientInstall, 'packaging', summary?.why.join('; '));
    assert.equal(summary.status, 'GOOD');
    assert.ok(
      (await readFile(path.join(hostDir, 'fetch-ca.pem'), 'utf8')).includes((await readFile(lab.ca.caFile, 'utf8')).trim()),
      'the host got the lab CA in its bundle',
    );
    const served = await servedPaths(lab.nginx);
    assert.ok(served.includes('/builtin/client-autotest.tar.bz2'), 'the client package came from the https repository');
    assert.match(
      await readFile(lab.nginx.accessLog, 'utf8'),
      new RegExp(`"GET /builtin/client-autotest\\.tar\\.bz2 HTTP/[\\d.]+" 200 .*${tool}/`, 'i'),
      `fetched by ${tool}`,
    );
    assert.ok(served.includes('/builtin/test-sleeptest.tar.bz2'), 'the job fetched its test from the https repository');
  });
}

test('autoserv without a client certificate for the hosts falls back to a copy, and says the https repository turned the host away', async (t) => {
  const lab = await tlsLab(t);
  const config = await writeConfig(lab.dir, { fetch_location: lab.url, fetch_ca_file: lab.ca.caFile });
  const result = await runCli(
    [
      'autoserv',
      '-m',
      'localhost',
      '-r',
      path.join(lab.dir, 'results'),
      '--config',
      config,
      '--host-dir',
      path.join(lab.dir, 'host'),
      path.join(ROOT, 'example', 'jobs', 'example.control.mjs'),
    ],
    { cwd: lab.dir },
  );
  const [summary] = JSON.parse(await readFile(path.join(lab.dir, 'results', 'summary.json'), 'utf8')) as HostSummary[];
  assert.equal(summary?.clientInstall, 'light copy', result.stdout + result.stderr);
  assert.match(summary.why.join(' '), /packaging: [\s\S]*400[\s\S]*cannot fetch packages\.checksum/);
  assert.ok(!(await servedPaths(lab.nginx)).includes('/builtin/packages.checksum'), 'nginx served nothing without a client certificate');
});
