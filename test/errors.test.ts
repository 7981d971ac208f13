import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readFile } from 'node:fs/promises';
import { EXIT_FAILED, EXIT_USAGE, exitCodeOf, printError } from '../src/cli/output.js';
import { AutotestError, ERROR_CODES, httpStatusOf, redactSecrets, type ErrorCode } from '../src/errors.js';

test('hides passwords, tokens standing as URL users and secret query values, but keeps SSH user names', () => {
  const text = [
    'https://user:p@ss@w0rd@repo.example/p',
    'https://ghp_abcdef123@github.example/o/r.git',
    'http://repo/x?token=s3cr3t&name=a',
    'ssh://root@host/var/www',
  ].join(' ');
  const shown = redactSecrets(text);
  for (const secret of ['p@ss', 'w0rd', 'ghp_abcdef123', 's3cr3t']) assert.equal(shown.includes(secret), false, secret);
  assert.match(shown, /ssh:\/\/root@host\/var\/www/);
  assert.match(shown, /name=a/);
});

test('hides secrets in several URLs of one line, each by its own scheme, and leaves text without URLs as it was', () => {
  const shown = redactSecrets('from s3://KEY:SECRET@bucket/p and git+https://tok@h/r.git, then ssh://user:pw@h:22/x; plain text: a:b@c');
  assert.equal(shown, 'from s3://KEY:***@bucket/p and git+https://***@h/r.git, then ssh://user:***@h:22/x; plain text: a:b@c');
  assert.equal(redactSecrets('no url here, just words: x@y'), 'no url here, just words: x@y');
});

test('hides secrets in very long texts in one pass: 100,000 characters of "a://" pieces and of scheme letters', () => {
  // Each once took seconds (a regular expression trying every start position); a linear pass
  // reads them in milliseconds. Asserted by the outcome, not by a timing.
  const pieces = 'a://'.repeat(25_000);
  assert.equal(redactSecrets(pieces), pieces);
  const passwords = 'a://b:c/'.repeat(12_500);
  assert.equal(redactSecrets(passwords), passwords);
  const letters = `${'x'.repeat(100_000)}://u:p@h/`;
  assert.equal(redactSecrets(letters), `${'x'.repeat(100_000)}://u:***@h/`);
});

test('hides query secrets by how their key ends, a password holding a raw "/", and a token user under a scheme that ends as a web one', () => {
  const shown = redactSecrets(
    [
      'https://gitlab.example/api?private_token=glpat-SECRET1&page=2',
      'https://host/p?api_key=SECRET2',
      'https://user:pa/ss@host/path',
      'proxyhttps://SECRET4@host/x',
      'https://registry.example:8080/@scope/pkg',
    ].join(' '),
  );
  for (const secret of ['SECRET1', 'SECRET2', 'ss@host', 'SECRET4']) assert.equal(shown.includes(secret), false, `${secret} in ${shown}`);
  assert.match(shown, /page=2/);
  assert.match(shown, /https:\/\/registry\.example:8080\/@scope\/pkg/, 'a port and a path with "@" are left as they are');
});

test('every error code has an HTTP status and an exit code, and the table lists exactly the declared codes', async () => {
  const codes = Object.keys(ERROR_CODES) as ErrorCode[];
  for (const code of codes) {
    const status = httpStatusOf(code);
    assert.ok(Number.isInteger(status) && status >= 400 && status <= 599, `${code}: ${status.toString()}`);
    assert.ok([EXIT_FAILED, EXIT_USAGE].includes(exitCodeOf(code)), code);
  }
  // The union type and the table agree by construction; this catches a code written as a string elsewhere.
  const source = await readFile(new URL('../../src/errors.ts', import.meta.url), 'utf8');
  const declared = [...source.matchAll(/^ {2}\| '(ERR_\w+)'/gm)].map((match) => match[1]);
  assert.deepEqual([...declared].sort(), [...codes].sort());
});

test('the statuses that were wrong at the HTTP boundary: not found 404, too large 413, an upstream timeout 504, an upstream failure 502, a bad request 400', () => {
  assert.equal(httpStatusOf('ERR_NOT_FOUND'), 404);
  assert.equal(httpStatusOf('ERR_TOO_LARGE'), 413);
  assert.equal(httpStatusOf('ERR_TIMEOUT'), 504);
  assert.equal(httpStatusOf('ERR_FETCH'), 502);
  assert.equal(httpStatusOf('ERR_BAD_REQUEST'), 400);
  assert.equal(httpStatusOf('ERR_NO_SPACE'), 507);
});

test('the CLI exits 2 for what the user typed or configured (usage, config, names, control files) and 1 for the rest, printing the code and the hint', () => {
  const lines: string[] = [];
  const output = { out: (line: string) => lines.push(line), err: (line: string) => lines.push(line), isTTY: false };
  for (const code of ['ERR_USAGE', 'ERR_CONFIG', 'ERR_BAD_NAME', 'ERR_BAD_LOCATION', 'ERR_CONTROL_FILE'] as const)
    assert.equal(exitCodeOf(code), EXIT_USAGE, code);
  for (const code of ['ERR_TIMEOUT', 'ERR_DEP_SETUP', 'ERR_FETCH', 'ERR_NOT_FOUND'] as const) assert.equal(exitCodeOf(code), EXIT_FAILED, code);
  assert.equal(printError(output, new AutotestError('ERR_TIMEOUT', 'test sleeptest did not finish within 1 s', { hint: 'look at its output' })), EXIT_FAILED);
  assert.deepEqual(lines, ['error: test sleeptest did not finish within 1 s [ERR_TIMEOUT]', 'hint: look at its output']);
});
