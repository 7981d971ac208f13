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
