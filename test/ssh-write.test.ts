import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { parseLocation } from '../src/config/index.js';
import { isAutotestError } from '../src/errors.js';
import { createSshTarget } from '../src/repositories/ssh/write.js';
import { Resources } from '../src/resources.js';
import { startSshd } from './fixtures/sshd.js';
import { tempDir } from './helpers.js';

test('an SSH upload whose temp file cannot be created (its folder gone since prepare) is refused as unwritable, never reported as a full disk', async (t) => {
  const server = await startSshd();
  t.after(() => server.stop());
  process.env.AUTOTEST_SSH_CONFIG = server.configFile;
  const resources = new Resources();
  t.after(() => resources.close());
  const dir = await tempDir(t);
  const source = path.join(dir, 'test-hello.tar.bz2');
  await writeFile(source, 'the bytes of a package');
  const location = parseLocation(`ssh://${server.alias}${path.join(dir, 'removed')}`, '/');
  assert.ok(location.kind === 'ssh');
  const target = createSshTarget(location, { resources });
  await assert.rejects(target.stage('test-hello.tar.bz2', source), (error: unknown) => {
    assert.ok(isAutotestError(error), String(error));
    assert.equal(error.code, 'ERR_LOCATION_REFUSED', error.message);
    assert.match(error.message, /cannot write test-hello\.tar\.bz2/);
    return true;
  });
});
