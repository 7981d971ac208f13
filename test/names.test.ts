import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkName, parseFileName, packageFileName, parseNameList } from '../src/packages/index.js';
import { isAutotestError } from '../src/errors.js';

test('refuses names that could leave a folder or reach a shell', () => {
  for (const bad of ['../x', 'a/b', '.hidden', '', 'a..b', 'x;rm -rf /', '$(touch pwned)', 'a b', '`id`', 'a\nb', '-rf']) {
    const named = bad === '' ? 'is empty' : JSON.stringify(bad);
    assert.throws(
      () => checkName(bad),
      (error: unknown) => isAutotestError(error, 'ERR_BAD_NAME') && error.message.includes(named),
    );
  }
});

test('accepts Autotest names and reads package file names back', () => {
  assert.equal(packageFileName('test', 'sleeptest', 'bzip2'), 'test-sleeptest.tar.bz2');
  assert.deepEqual(parseFileName('dep-libaio-0.3.tar.bz2'), { type: 'dep', name: 'libaio-0.3', compression: 'bzip2' });
  assert.deepEqual(parseFileName('client-autotest.tar.gz'), { type: 'client', name: 'autotest', compression: 'gzip' });
  assert.deepEqual(parseFileName('vmlinuz-6.1'), { type: undefined, name: 'vmlinuz-6.1', compression: undefined });
  assert.deepEqual(parseNameList(' a, b ,,c', 'test'), ['a', 'b', 'c']);
  assert.throws(() => parseNameList(',', 'test'), /test list is empty/);
});
