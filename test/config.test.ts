import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { loadConfig, parseIni, getIniValue, EMBEDDED_SOURCE, SERVER_KEYS, CONFIG_KEYS, DEFAULT_S3_SETTINGS, type ConfigSection } from '../src/config/index.js';
import { renderKeyTable, tableMarkers } from '../src/config/docs.js';
import { readS3Config } from '../src/config/s3-section.js';
import { isAutotestError } from '../src/errors.js';
import { ROOT, tempDir, writeConfig } from './helpers.js';
import { createTestCa } from './fixtures/tls.js';

/** Each `[line, message]`: the config `write(line)` makes is refused with an error matching `message` (and `also`). */
async function assertRefused(
  write: (line: string) => Promise<string>,
  cases: readonly (readonly [string, RegExp])[],
  also: (message: string) => void = () => undefined,
): Promise<void> {
  for (const [line, message] of cases) {
    const file = await write(`${line}\n`);
    await assert.rejects(loadConfig({ file, env: {} }), (error: unknown) => {
      assert.ok(error instanceof Error);
      assert.match(error.message, message);
      assert.ok(error.message.includes(file), error.message);
      also(error.message);
      return true;
    });
  }
}

test('reads the ConfigParser dialect: ":" and "=", case-insensitive keys, comments, continuation lines, interpolation', () => {
  const doc = parseIni(
    [
      '# comment',
      '[DEFAULT]',
      'base = /srv',
      '[PACKAGES]',
      'Upload_Location: %(base)s/builtin ; inline comment',
      'fetch_location = http://a/x,',
      '   http://b/y',
      '; another comment',
      'percent = 100%%',
    ].join('\n'),
    'g.ini',
  );
  assert.equal(getIniValue(doc, 'PACKAGES', 'upload_location')?.value, '/srv/builtin');
  assert.equal(getIniValue(doc, 'PACKAGES', 'fetch_location')?.value, 'http://a/x,\nhttp://b/y');
  assert.equal(getIniValue(doc, 'PACKAGES', 'percent')?.value, '100%');
});

test('refuses interpolation that would build a value of exponential size, naming the file, line and key', () => {
  // Each level repeats the one below ten times: 10^9 characters at the last one.
  const lines = ['[PACKAGES]', 'l0 = xxxxxxxxxx'];
  for (let i = 1; i <= 9; i += 1) lines.push(`l${i.toString()} = ${`%(l${(i - 1).toString()})s`.repeat(10)}`);
  lines.push('fetch_location = %(l9)s');
  const doc = parseIni(lines.join('\n'), 'laughs.ini');
  assert.throws(
    () => getIniValue(doc, 'PACKAGES', 'fetch_location'),
    (error: unknown) =>
      isAutotestError(error, 'ERR_CONFIG') &&
      /laughs\.ini:12.*"fetch_location" in \[PACKAGES\] makes a value longer than 1048576 characters/.test(error.message),
  );
  assert.equal(getIniValue(doc, 'PACKAGES', 'l3')?.value.length, 10_000, 'a value within the bound is built whole');
});

test('names the file and line of a line it cannot read', () => {
  assert.throws(() => parseIni('[PACKAGES]\nthis line has no delimiter\n', '/etc/g.ini'), /\/etc\/g\.ini:2: cannot read/);
  assert.throws(() => parseIni('key: value\n', '/etc/g.ini'), /\/etc\/g\.ini:1: .*before any \[SECTION\]/);
  assert.throws(() => parseIni('[A]\nk: 1\nK = 2\n', 'g.ini'), /g\.ini:3: key "k" appears twice/);
});

test('lets shadow_config.ini override global_config.ini key by key', async (t) => {
  const dir = await tempDir(t);
  const file = await writeConfig(dir, { upload_location: '/srv/a', custom_max_age: '10' });
  await writeConfig(dir, { custom_max_age: '5' }, 'shadow_config.ini');
  const config = await loadConfig({ file, cwd: dir });
  assert.equal(config.packages.customMaxAgeDays, 5);
  assert.deepEqual(
    config.packages.uploadLocations.map((l) => l.text),
    ['/srv/a'],
  );
});

test('parses every [PACKAGES] key with its units, lists and defaults', async (t) => {
  const dir = await tempDir(t);
  const file = await writeConfig(dir, {
    fetch_location: 'http://repo/packages/builtin, ssh://root@repo:2222/var/www/p, file:///srv/p, git://repo/p.git:main, ,, http://f1/b | http://f2/b',
    upload_location: 'rel/builtin, ssh://repo/var/www/builtin',
    minimum_free_space: '2.5',
    serve_packages_from_autoserv: 'off',
    compression: 'gzip',
    client_cache_size: '2.5',
  });
  const { packages } = await loadConfig({ file, cwd: '/' });
  assert.equal(packages.clientCacheSizeBytes, 2.5e9);
  assert.equal((await loadConfig({ cwd: dir, env: {} })).packages.clientCacheSizeBytes, 0, 'unbounded by default');
  assert.deepEqual(
    packages.fetchLocations.map((l) => l.kind),
    ['http', 'ssh', 'local', 'git', 'group'],
  );
  const group = packages.fetchLocations[4];
  assert.deepEqual(group?.kind === 'group' && group.members.map((m) => m.text), ['http://f1/b', 'http://f2/b']);
  assert.deepEqual(packages.uploadLocations[0], { kind: 'local', path: path.join(dir, 'rel/builtin'), text: 'rel/builtin' });
  assert.equal(packages.minimumFreeSpaceBytes, 2.5e9);
  assert.equal(packages.servePackagesFromAutoserv, false);
  assert.equal(packages.customMaxAgeDays, 40);
  assert.equal(packages.compression, 'gzip');
});

test('refuses a bad value with file, line, section, key and what is allowed', async (t) => {
  const dir = await tempDir(t);
  const cases: [Record<string, string>, RegExp][] = [
    [{ serve_packages_from_autoserv: 'maybe' }, /global_config\.ini:2: \[PACKAGES\] serve_packages_from_autoserv = "maybe": allowed is true\/false/],
    [{ minimum_free_space: '-1' }, /\[PACKAGES\] minimum_free_space = "-1": allowed is a number >= 0/],
    [{ custom_max_age: 'forty' }, /\[PACKAGES\] custom_max_age = "forty"/],
    [{ upload_location: 'http://repo/x' }, /upload_location .*http and git locations are read-only/],
    [{ fetch_location: 'ftp://repo/x' }, /fetch_location .*unknown scheme/],
    [{ fetch_location: 'ssh://root@bad;host/x' }, /fetch_location .*not a valid/],
    [{ fetch_location: 'http://f1/b | | http://f2/b' }, /\[PACKAGES\] fetch_location = .*a "\|" group has an empty member/],
    [{ fetch_location: 'http://f1/b | ftp://f2/b' }, /\[PACKAGES\] fetch_location = .*ftp:\/\/f2\/b.*unknown scheme/],
    [{ compression: 'rar' }, /compression = "rar": allowed is bzip2, gzip, zstd/],
    [{ client_cache_size: '-1' }, /\[PACKAGES\] client_cache_size = "-1": allowed is a number >= 0/],
    // Beyond what a Node.js timer holds: it would fire at once and fail every fetch.
    [{ fetch_timeout: '3000000' }, /\[PACKAGES\] fetch_timeout = "3000000": allowed is a number >= 0\.01 and <= 2147483/],
    [{ fetch_connect_timeout: '1e9' }, /fetch_connect_timeout = "1e9": allowed is .* <= 2147483/],
    [{ fetch_cooldown: '99999999' }, /fetch_cooldown = "99999999": allowed is .* <= 2147483/],
    // Python's int() and float() read decimals only; JavaScript's Number() would take these.
    [{ minimum_free_space: '0x10' }, /minimum_free_space = "0x10": allowed is a number >= 0/],
    [{ fetch_retries: '0b11' }, /fetch_retries = "0b11": allowed is an integer/],
    [{ client_cache_size: 'Infinity' }, /client_cache_size = "Infinity": allowed is a number >= 0/],
    // A size too large to count in bytes: 1e300 GB would be Infinity.
    [{ minimum_free_space: '1e300' }, /minimum_free_space = "1e300": allowed is a number >= 0 and <= 9007199/],
  ];
  for (const [keys, message] of cases) {
    const file = await writeConfig(dir, keys);
    await assert.rejects(loadConfig({ file }), (error: unknown) => isAutotestError(error, 'ERR_CONFIG') && message.test(error.message));
  }
});

test('warns about unknown keys and uses the embedded default without a file', async (t) => {
  const dir = await tempDir(t);
  const file = await writeConfig(dir, { upload_location: '/x', uplaod_location: '/y' });
  const config = await loadConfig({ file });
  assert.match(config.warnings.join('\n'), /unknown key "uplaod_location" in \[PACKAGES\] is ignored \(did you mean "upload_location"\?\)/);
  const embedded = await loadConfig({ cwd: dir, env: {} });
  assert.equal(embedded.source, EMBEDDED_SOURCE);
  assert.equal(embedded.packages.uploadLocations[0]?.kind === 'local' && embedded.packages.uploadLocations[0].path, path.join(dir, 'var/packages/builtin'));
});

test('a misspelt section or key is named with the closest known one, while the other sections of an Autotest config pass silently', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'global_config.ini');
  await writeFile(
    file,
    [
      '[AUTOTEST_WEB]',
      'host: localhost',
      '[SCHEDULER]',
      'notify_email: x@example.com',
      '[PACKAGE]',
      'upload_location: /x',
      '[server]',
      'port: 9000',
      '[SERVER]',
      'prot: 9000',
      'zzzz: 1',
      '',
    ].join('\n'),
  );
  const { warnings } = await loadConfig({ file, env: {} });
  assert.deepEqual(warnings, [
    `${file}:6: unknown section [PACKAGE] is ignored, with its 1 key(s) (did you mean [PACKAGES]? section names are case-sensitive)`,
    `${file}:8: unknown section [server] is ignored, with its 1 key(s) (did you mean [SERVER]? section names are case-sensitive)`,
    `${file}:10: unknown key "prot" in [SERVER] is ignored (did you mean "port"?)`,
    `${file}:11: unknown key "zzzz" in [SERVER] is ignored (known: ${Object.keys(SERVER_KEYS).join(', ')})`,
  ]);
});

test('takes the config file from the environment when --config is not given, and says when it is missing', async (t) => {
  const dir = await tempDir(t);
  const file = await writeConfig(dir, { upload_location: '/from/env' });
  const config = await loadConfig({ env: { AUTOTEST_CONFIG: file } });
  assert.equal(config.source, file);
  await writeFile(path.join(dir, 'empty.ini'), '');
  await assert.rejects(loadConfig({ file: path.join(dir, 'nope.ini') }), /config file .*nope\.ini does not exist/);
});

/** Each `key:` line of an ini file, set or commented out (`# key: value`), with its section. */
function keyLines(text: string): { section: string; key: string; commented: boolean; line: number }[] {
  let section = '';
  return text.split('\n').flatMap((line, index) => {
    const heading = /^\[([^\]]+)\]/.exec(line);
    if (heading?.[1] !== undefined) section = heading[1];
    const match = /^([#;]\s*)?([a-z][a-z0-9_]*)\s*[:=](\s|$)/.exec(line);
    return match?.[2] === undefined ? [] : [{ section, key: match[2], commented: match[1] !== undefined, line: index + 1 }];
  });
}

const SECTIONS = Object.keys(CONFIG_KEYS) as ConfigSection[];

test('the README key tables are those written from the declarations, every key with its declared default', async () => {
  const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');
  for (const section of SECTIONS) {
    const [begin, end] = tableMarkers(section);
    const from = readme.indexOf(begin);
    assert.ok(from >= 0 && readme.indexOf(end, from) > from, `README.md has the markers of the [${section}] table`);
    const table = readme.slice(from + begin.length, readme.indexOf(end, from)).trim();
    assert.equal(table, renderKeyTable(section), `README.md's [${section}] table is out of date: run npm run docs:config`);
    const keys = [...table.matchAll(/^\| `([a-z0-9_]+)` \|/gm)].map((match) => match[1]);
    assert.deepEqual(keys, Object.keys(CONFIG_KEYS[section]), `the [${section}] table has every declared key and no other`);
  }
});

test('every key of the example config, set or commented out, is declared in the section it stands in, and every declared key is set there', async () => {
  const text = await readFile(path.join(ROOT, 'etc', 'global_config.example.ini'), 'utf8');
  const lines = keyLines(text).filter((entry) => entry.section !== 'DEFAULT');
  for (const { section, key, line } of lines) {
    const declared: Record<string, unknown> = CONFIG_KEYS[(section.startsWith('S3:') ? 'S3' : section) as ConfigSection];
    assert.ok(Object.hasOwn(declared, key), `etc/global_config.example.ini:${line.toString()}: "${key}" is not a declared key of [${section}]`);
  }
  for (const section of SECTIONS) {
    for (const key of Object.keys(CONFIG_KEYS[section])) {
      assert.ok(
        lines.some((entry) => entry.section === section && entry.key === key && !entry.commented),
        `[${section}] ${key} is set in the example config`,
      );
    }
  }
});

test('the S3 settings of a location read without a config are the declared defaults', () => {
  const { settingsFor } = readS3Config(new Map(), () => '/', {});
  assert.deepEqual(settingsFor('any-bucket'), DEFAULT_S3_SETTINGS);
  const fromEnv = readS3Config(new Map(), () => '/', { AWS_REGION: 'eu-west-3', AWS_PROFILE: 'lab' }).settingsFor('any-bucket');
  assert.deepEqual([fromEnv.region, fromEnv.profile], ['eu-west-3', 'lab']);
});

test('index_valid_days past 100 years is refused at load, not met at publish as an expiry date no Date can hold', async (t) => {
  const dir = await tempDir(t);
  for (const value of ['1e9', '1e300', '36526']) {
    const file = await writeConfig(dir, { index_valid_days: value });
    await assert.rejects(
      loadConfig({ file, env: {} }),
      new RegExp(`\\[PACKAGES\\] index_valid_days = "${value}": allowed is a number >= 0\\.001 and <= 36525`),
    );
  }
  const file = await writeConfig(dir, { index_valid_days: '36525' });
  assert.equal((await loadConfig({ file, env: {} })).packages.indexValidDays, 36525);
});

test('a malformed AWS_PROFILE or AWS_REGION stops only a config that names an s3:// location, naming the variable', async (t) => {
  const dir = await tempDir(t);
  const badEnv = { AWS_PROFILE: 'my profile', AWS_REGION: 'eu west' };
  const local = await writeConfig(dir, { fetch_location: path.join(dir, 'repo'), upload_location: path.join(dir, 'repo') });
  const config = await loadConfig({ file: local, env: badEnv });
  assert.equal(config.packages.uploadLocations[0]?.kind, 'local');
  const s3 = await writeConfig(dir, { upload_location: 's3://lab-packages/builtin' }, 's3.ini');
  await assert.rejects(loadConfig({ file: s3, env: badEnv }), /\$AWS_REGION = "eu west": allowed is a region name/);
  await assert.rejects(loadConfig({ file: s3, env: { AWS_PROFILE: 'my profile' } }), /\$AWS_PROFILE = "my profile"/);
  const badFile = await writeConfig(dir, { fetch_location: path.join(dir, 'repo') }, 'bad.ini');
  await writeFile(badFile, '\n[S3]\nregion: eu west\n', { flag: 'a' });
  await assert.rejects(loadConfig({ file: badFile, env: {} }), /bad\.ini:\d+: \[S3\] region = "eu west"/);
});

test('the example config in etc/ is refused while its upload_token is the placeholder, and loads without warnings once it is set', async () => {
  const file = path.join(ROOT, 'etc', 'global_config.example.ini');
  await assert.rejects(loadConfig({ file, env: {} }), /\[SERVER\] upload_token = the value given \(the example config's placeholder\)/);
  const config = await loadConfig({ file, env: { AUTOTEST_UPLOAD_TOKEN: 'a-real-secret-of-32-characters!!' } });
  assert.deepEqual(config.warnings, []);
  assert.equal(config.packages.fetchLocations.length, 4);
  assert.equal(config.packages.uploadLocations[0]?.kind === 'local' && config.packages.uploadLocations[0].path, '/usr/local/autotest/packages/builtin');
});

test('reads both [PACKAGES] examples of the seed document as written', async (t) => {
  const dir = await tempDir(t);
  // A verbatim copy of the seed's two examples, so the test does not need ../shared.
  const seed = await readFile(path.join(ROOT, 'test', 'fixtures', 'seed-packages-examples.txt'), 'utf8');
  const sections = [...seed.matchAll(/\[PACKAGES\]\n(?:[a-z_]+:.*\n?)+/g)].map((m) => m[0]);
  assert.equal(sections.length, 2, 'the seed document holds two [PACKAGES] examples');
  for (const [i, section] of sections.entries()) {
    const file = path.join(dir, `seed${i}.ini`);
    await writeFile(file, section);
    const config = await loadConfig({ file });
    assert.deepEqual(config.warnings, []);
    assert.equal(config.packages.fetchLocations.length, i === 0 ? 2 : 4);
  }
  const second = await loadConfig({ file: path.join(dir, 'seed1.ini') });
  assert.deepEqual(
    second.packages.uploadLocations.map((l) => l.kind),
    ['local', 'ssh'],
  );
  assert.equal(second.packages.customDownloadLocation, '/usr/local/autotest/custom_packages');
});

test('reads [SERVER] with its defaults, takes the token from the environment first, and refuses bad values without echoing a token', async (t) => {
  const dir = await tempDir(t);
  const write = async (server: string): Promise<string> => {
    const file = path.join(dir, 'global_config.ini');
    await writeFile(file, `[PACKAGES]\nupload_location: ${dir}/builtin\ncustom_upload_location: ${dir}/custom\n[SERVER]\n${server}`);
    return file;
  };
  const defaults = await loadConfig({ file: await write(''), env: {} });
  assert.deepEqual(
    { ...defaults.server },
    {
      logLevel: 'info',
      listenAddress: '127.0.0.1',
      port: 8080,
      builtin: { kind: 'local', path: `${dir}/builtin`, text: `${dir}/builtin` },
      custom: { kind: 'local', path: `${dir}/custom`, text: `${dir}/custom` },
      uploadToken: undefined,
      maxUploadBytes: 1024e6,
      maxUploadEntries: 100_000,
      maxUploadExpandedBytes: 4000e6,
      maxConcurrentUploads: 4,
      uploadMinRate: { bytesPerSecond: 1000, windowMs: 60_000 },
      cache: { dir: path.resolve('var', 'serve_cache'), sizeBytes: 10e9, indexMaxAgeMs: 60_000 },
    },
  );
  const fromEnv = await loadConfig({ file: await write('upload_token: from-the-file-123\n'), env: { AUTOTEST_UPLOAD_TOKEN: 'from-the-env-456' } });
  assert.equal(fromEnv.server.uploadToken, 'from-the-env-456');
  await assert.rejects(
    loadConfig({ file: await write(''), env: { AUTOTEST_UPLOAD_TOKEN: 'change-me-to-a-long-random-string' } }),
    /\$AUTOTEST_UPLOAD_TOKEN: the example config's placeholder/,
  );
  await assert.rejects(loadConfig({ file: await write(''), env: { AUTOTEST_UPLOAD_TOKEN: 'short-secret' } }), /\$AUTOTEST_UPLOAD_TOKEN: 12 characters/);
  await assertRefused(
    write,
    [
      ['port: 70000', /\[SERVER\] port = "70000"/],
      ['port: http', /\[SERVER\] port/],
      ['log_level: loud', /log_level = "loud".*trace, debug, info/],
      ['upload_token: short', /\[SERVER\] upload_token = the value given \(5 characters\).*at least 16 characters/],
      ['upload_token: fifteen-chars-x', /upload_token = the value given \(15 characters\)/],
      ['upload_token: change-me-to-a-long-random-string', /upload_token = the value given \(the example config's placeholder\)/],
      ['upload_token: "change-me-to-a-long-random-string"', /upload_token = the value given \(the example config's placeholder\)/],
      ["upload_token: 'CHANGE-ME-TO-A-LONG-RANDOM-STRING'", /upload_token = the value given \(the example config's placeholder\)/],
      ['upload_token: "a-quoted-secret-token-1234"', /upload_token = the value given \(it starts with a quote/],
      ['upload_token: aaaaaaaaaaaaaaaaaaaa', /upload_token = the value given \(it repeats fewer than 4 different characters\)/],
      ['listen_address: a b', /listen_address/],
    ] as const,
    (message) => {
      assert.doesNotMatch(message, /"short"/, 'a token is never echoed');
    },
  );
});

test('reads upstreams in builtin_dir and custom_dir as cached, with cache_dir, cache_size and index_max_age, and refuses git or bad values', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'global_config.ini');
  const write = async (server: string): Promise<string> => {
    await writeFile(file, `[PACKAGES]\nupload_location: ${dir}/builtin\n[SERVER]\n${server}`);
    return file;
  };
  const config = await loadConfig({
    file: await write(
      'builtin_dir: http://a.lab/builtin, http://b.lab/builtin | ssh://c.lab/srv/builtin\ncustom_dir: s3://lab-bucket/custom\ncache_dir: front\ncache_size: 2.5\nindex_max_age: 30\n',
    ),
    env: {},
  });
  assert.deepEqual(config.warnings, []);
  const builtin = config.server.builtin;
  assert.equal(builtin?.kind, 'cached');
  assert.deepEqual(
    builtin.upstreams.map((location) => location.kind),
    ['http', 'group'],
  );
  const custom = config.server.custom;
  assert.ok(custom?.kind === 'cached', 'an S3 prefix alone is served through the cache');
  assert.deepEqual(
    custom.upstreams.map((location) => location.kind),
    ['s3'],
  );
  assert.deepEqual(config.server.cache, { dir: path.join(dir, 'front'), sizeBytes: 2.5e9, indexMaxAgeMs: 30_000 });
  const cachedSsh = await loadConfig({ file: await write('builtin_dir: ssh://c.lab/srv/builtin\n'), env: {} });
  assert.equal(cachedSsh.server.builtin?.kind, 'cached');
  await assertRefused(write, [
    ['builtin_dir: http://a.lab/b, git://g.lab/repo.git', /\[SERVER\] builtin_dir = .*"git:\/\/g\.lab\/repo\.git" is a git repository/],
    ['custom_dir: ftp://x/y', /\[SERVER\] custom_dir = "ftp:\/\/x\/y".*unknown scheme/],
    ['cache_size: 0', /\[SERVER\] cache_size = "0".*a number >= 0\.000001/],
    ['index_max_age: -1', /\[SERVER\] index_max_age = "-1".*a number >= 0/],
  ] as const);
});

test('reads the upload bounds of [SERVER] and refuses bad ones naming the file, section and key', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'global_config.ini');
  const write = async (server: string): Promise<string> => {
    await writeFile(file, `[PACKAGES]\nupload_location: ${dir}/builtin\n[SERVER]\n${server}`);
    return file;
  };
  const config = await loadConfig({ file: await write('max_upload_entries: 500\nmax_upload_expanded_size: 2.5\nmax_concurrent_uploads: 2\n'), env: {} });
  assert.deepEqual(config.warnings, []);
  assert.deepEqual([config.server.maxUploadEntries, config.server.maxUploadExpandedBytes, config.server.maxConcurrentUploads], [500, 2_500_000, 2]);
  await assertRefused(write, [
    ['max_upload_entries: 0', /\[SERVER\] max_upload_entries = "0".*an integer >= 1/],
    ['max_upload_entries: 1.5', /max_upload_entries = "1\.5".*an integer/],
    ['max_upload_expanded_size: lots', /\[SERVER\] max_upload_expanded_size = "lots".*a number >= 0\.001/],
    ['max_concurrent_uploads: 0', /\[SERVER\] max_concurrent_uploads = "0".*an integer >= 1 and <= 1000/],
  ] as const);
});

test('reads s3:// locations with [S3] and per-bucket [S3:BUCKET] settings, and refuses bad buckets, prefixes, endpoints and credentials in the URL without echoing them', async (t) => {
  const dir = await tempDir(t);
  const write = async (packages: string, s3: string): Promise<string> => {
    const file = path.join(dir, 'global_config.ini');
    await writeFile(file, `[PACKAGES]\n${packages}\n${s3}`);
    return file;
  };
  const config = await loadConfig({
    file: await write(
      'upload_location: s3://lab-packages/autotest/builtin\nfetch_location: s3://archive.lab/old, s3://lab-packages\n',
      '[S3]\nendpoint: http://rgw.lab:7480/\npart_size: 32\n[S3:archive.lab]\nendpoint: https://s3.archive.example\nchecksum_mode: when_supported\npath_style: false\n',
    ),
    env: {},
  });
  assert.deepEqual(config.warnings, []);
  const [upload] = config.packages.uploadLocations;
  assert.ok(upload?.kind === 's3');
  assert.equal(upload.bucket, 'lab-packages');
  assert.equal(upload.prefix, 'autotest/builtin');
  assert.deepEqual(upload.settings, {
    endpoint: 'http://rgw.lab:7480',
    region: 'us-east-1',
    pathStyle: true,
    checksumMode: 'when_required',
    profile: undefined,
    partSizeBytes: 32 * 2 ** 20,
    uploadConcurrency: 4,
  });
  const [archive, top] = config.packages.fetchLocations;
  assert.ok(archive?.kind === 's3' && top?.kind === 's3');
  assert.deepEqual(
    {
      endpoint: archive.settings.endpoint,
      pathStyle: archive.settings.pathStyle,
      checksumMode: archive.settings.checksumMode,
      part: archive.settings.partSizeBytes,
    },
    { endpoint: 'https://s3.archive.example', pathStyle: false, checksumMode: 'when_supported', part: 32 * 2 ** 20 },
  );
  assert.equal(top.prefix, '');
  const served = config.server.builtin;
  assert.ok(
    served?.kind === 'cached' && served.upstreams[0]?.kind === 's3',
    'autotest serve serves the S3 upload location through its cache when there is no local one',
  );

  for (const [packages, s3, message] of [
    ['upload_location: s3://AKIDEXAMPLE:wJalrXUtnFEMIbPxRfiCYEXAMPLEKEY@lab-packages/x', '', /credentials never go in an s3:\/\/ URL/],
    ['upload_location: s3://x/p', '', /bucket "x" is not a valid bucket name/],
    ['upload_location: s3://lab-packages/a/../b', '', /empty, "\." or "\.\." part/],
    ['upload_location: s3://lab-packages/a b', '', /prefix part "a b"/],
    ['fetch_location: s3://lab-packages/a?x=1', '', /take no "\?"/],
    ['fetch_location: s3://lab-packages', '[S3]\nendpoint: ftp://rgw.lab', /\[S3\] endpoint = "ftp:\/\/rgw\.lab".*http\(s\):\/\/host/],
    [
      'fetch_location: s3://lab-packages',
      '[S3:lab-packages]\nchecksum_mode: always',
      /\[S3:lab-packages\] checksum_mode = "always".*when_required or when_supported/,
    ],
    ['fetch_location: s3://lab-packages', '[S3]\npart_size: 1', /\[S3\] part_size = "1".*>= 5/],
  ] as const) {
    await assert.rejects(loadConfig({ file: await write(packages, s3), env: {} }), (error: unknown) => {
      assert.ok(error instanceof Error);
      assert.match(error.message, message);
      assert.doesNotMatch(error.message, /wJalrXUtnFEMIbPxRfiCYEXAMPLEKEY/, 'a secret in a URL is never echoed');
      return true;
    });
  }
  const unknown = await loadConfig({ file: await write('fetch_location: s3://lab-packages', '[S3]\nsecret_key: nope\n'), env: {} });
  assert.match(unknown.warnings.join('\n'), /unknown key "secret_key" in \[S3\]/);
});

test('reads fetch_ca_file, fetch_client_cert and fetch_client_key once at load, and refuses a missing, non-PEM or mismatched file naming the config file, line and key', async (t) => {
  const dir = await tempDir(t);
  const ca = await createTestCa(dir);
  const other = await createTestCa(await tempDir(t));
  const good = await writeConfig(dir, { fetch_ca_file: 'ca.pem', fetch_client_cert: ca.clientCert, fetch_client_key: ca.clientKey }, 'good.ini');
  const tls = (await loadConfig({ file: good })).packages.fetch.tls;
  assert.equal(tls?.ca?.file, ca.caFile, "a relative path is read from the config file's folder");
  assert.equal(tls.ca.pem, await readFile(ca.caFile, 'utf8'));
  assert.equal(tls.clientKey?.pem, await readFile(ca.clientKey, 'utf8'));
  assert.equal(
    (await loadConfig({ file: await writeConfig(dir, { fetch_ca_file: '' }, 'empty.ini') })).packages.fetch.tls,
    undefined,
    'an empty value means none',
  );

  await writeFile(path.join(dir, 'junk.pem'), 'not a certificate\n');
  const cases: [Record<string, string>, RegExp][] = [
    [{ fetch_ca_file: path.join(dir, 'missing.pem') }, /bad\.ini:2: \[PACKAGES\] fetch_ca_file = .*missing\.pem: cannot read it \(ENOENT\)/],
    [{ fetch_ca_file: path.join(dir, 'junk.pem') }, /bad\.ini:2: \[PACKAGES\] fetch_ca_file = .*junk\.pem: not a PEM file/],
    [
      { fetch_ca_file: ca.caFile, fetch_client_cert: ca.clientKey, fetch_client_key: ca.clientKey },
      /\[PACKAGES\] fetch_client_cert = .*client\.key: holds no certificate/,
    ],
    [
      { fetch_client_cert: ca.clientCert, fetch_client_key: other.clientKey },
      /bad\.ini:3: \[PACKAGES\] fetch_client_key = .*client\.key: is not the key of fetch_client_cert/,
    ],
    [
      { fetch_client_cert: ca.clientCert },
      /bad\.ini:2: \[PACKAGES\] fetch_client_cert = .*fetch_client_key is not set.*allowed is a file path, together with fetch_client_key/,
    ],
  ];
  for (const [keys, message] of cases) {
    const file = await writeConfig(dir, keys, 'bad.ini');
    await assert.rejects(loadConfig({ file }), (error: unknown) => isAutotestError(error, 'ERR_CONFIG') && message.test(error.message), JSON.stringify(keys));
  }
  // autoserv passes the client certificate's paths on to its hosts and never reads the key itself.
  const onHosts = await writeConfig(dir, { fetch_client_cert: '/etc/lab/host.pem', fetch_client_key: '/etc/lab/host.key' }, 'hosts.ini');
  const passedOn = (await loadConfig({ file: onHosts, readClientCertificate: false })).packages.fetch.tls;
  assert.deepEqual([passedOn?.clientCert?.file, passedOn?.clientKey?.file, passedOn?.clientKey?.pem], ['/etc/lab/host.pem', '/etc/lab/host.key', undefined]);
});
