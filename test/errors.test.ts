import assert from 'node:assert/strict';
import { test } from 'node:test';
import { redactSecrets } from '../src/errors.js';

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
  const shown = redactSecrets([
    'https://gitlab.example/api?private_token=glpat-SECRET1&page=2',
    'https://host/p?api_key=SECRET2',
    'https://user:pa/ss@host/path',
    'proxyhttps://SECRET4@host/x',
    'https://registry.example:8080/@scope/pkg',
  ].join(' '));
  for (const secret of ['SECRET1', 'SECRET2', 'ss@host', 'SECRET4']) assert.equal(shown.includes(secret), false, `${secret} in ${shown}`);
  assert.match(shown, /page=2/);
  assert.match(shown, /https:\/\/registry\.example:8080\/@scope\/pkg/, 'a port and a path with "@" are left as they are');
});
