import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { runChecked } from './fixtures/process.js';
import { startRadosgw } from './fixtures/radosgw.js';
import { tempDir } from './helpers.js';

/**
 * One SigV4-signed request with curl; returns the HTTP status. S3 wants the payload's SHA-256
 * in x-amz-content-sha256, which curl 7.88 does not add itself (it does sign it when given).
 */
async function s3curl(
  s3: { region: string; accessKey: string; secretKey: string },
  method: string,
  url: string,
  options: { body?: Buffer; bodyFile?: string; output?: string } = {},
): Promise<number> {
  const sha256 = createHash('sha256')
    .update(options.body ?? Buffer.alloc(0))
    .digest('hex');
  const args = ['-sS', '-o', options.output ?? '/dev/null', '-w', '%{http_code}', '-X', method];
  args.push('--aws-sigv4', `aws:amz:${s3.region}:s3`, '--user', `${s3.accessKey}:${s3.secretKey}`, '-H', `x-amz-content-sha256: ${sha256}`);
  if (options.bodyFile !== undefined) args.push('-H', 'Content-Type: application/octet-stream', '--data-binary', `@${options.bodyFile}`);
  const { stdout } = await runChecked('curl', [...args, url]);
  return Number(stdout);
}

test('a test radosgw accepts a signed PUT and GET of an object', async (t) => {
  const work = await tempDir(t);
  const started = Date.now();
  const s3 = await startRadosgw();
  t.after(() => s3.stop());
  t.diagnostic(`radosgw ready in ${Date.now() - started} ms at ${s3.endpoint}`);
  const bucket = `${s3.endpoint}/test-bucket`;
  const object = `${bucket}/some/key.bin`;

  assert.equal(await s3curl(s3, 'PUT', bucket), 200);
  const payload = randomBytes(100_000);
  const upload = path.join(work, 'upload.bin');
  await writeFile(upload, payload);
  assert.equal(await s3curl(s3, 'PUT', object, { body: payload, bodyFile: upload }), 200);

  const download = path.join(work, 'download.bin');
  assert.equal(await s3curl(s3, 'GET', object, { output: download }), 200);
  assert.ok(payload.equals(await readFile(download)), 'GET returned other bytes than were PUT');

  const wrongSecret = { ...s3, secretKey: `${s3.secretKey.slice(0, -1)}${s3.secretKey.endsWith('0') ? '1' : '0'}` };
  assert.equal(await s3curl(wrongSecret, 'GET', object), 403);
  assert.equal(await s3curl(wrongSecret, 'PUT', `${s3.endpoint}/other-bucket`), 403);
});
