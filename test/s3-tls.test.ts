import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import https from 'node:https';
import path from 'node:path';
import { test } from 'node:test';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { adminClient, awsEnv, startRadosgw } from './fixtures/radosgw.js';
import { createTestCa } from './fixtures/tls.js';
import { copyExampleTree, runCli, tempDir } from './helpers.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';

const BUCKET = 'lab-packages';
const LOCATION = `s3://${BUCKET}/autotest/builtin`;

test("the packager uploads to an https S3 endpoint of the lab's own CA with fetch_ca_file, and without it the failure names fetch_ca_file", async (t) => {
  const dir = await tempDir(t);
  const ca = await createTestCa(await tempDir(t, 'autotest-ca-'));
  // radosgw's own TLS (beast's ssl_endpoint), with a server certificate of the test CA.
  const s3 = await startRadosgw({ tls: { cert: ca.serverCert, key: ca.serverKey, ca: ca.caFile } });
  t.after(() => s3.stop());
  const agent = new https.Agent({ ca: await readFile(ca.caFile, 'utf8') });
  const admin = adminClient(s3, agent);
  t.after(() => {
    admin.destroy();
    agent.destroy();
  });
  await admin.send(new CreateBucketCommand({ Bucket: BUCKET }));
  const clientDir = await copyExampleTree(dir);
  const writeConfig = async (name: string, caFile: string | undefined): Promise<string> => {
    const file = path.join(dir, name);
    const lines = ['[PACKAGES]', `upload_location: ${LOCATION}`, `client_dir: ${clientDir}`, 'minimum_free_space: 0'];
    if (caFile !== undefined) lines.push(`fetch_ca_file: ${caFile}`);
    lines.push('[S3]', `endpoint: ${s3.endpoint}`, 'region: us-east-1', 'path_style: true', 'checksum_mode: when_required', '');
    await writeFile(file, lines.join('\n'));
    return file;
  };
  // No NODE_EXTRA_CA_CERTS of the machine may make the CA trusted behind the config's back.
  const cli = (args: string[]) => runCli(args, { cwd: dir, env: awsEnv(s3, { NODE_EXTRA_CA_CERTS: undefined }) });

  const untrusted = await cli(['packager', 'upload', '--all', '--config', await writeConfig('no-ca.ini', undefined)]);
  assert.equal(untrusted.code, 1, untrusted.stdout + untrusted.stderr);
  assert.match(
    untrusted.stderr,
    /S3 location s3:\/\/lab-packages\/autotest\/builtin: .*TLS failed \((UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|SELF_SIGNED_CERT_IN_CHAIN)\)/,
  );
  assert.match(untrusted.stderr, /hint: .*fetch_ca_file/);
  assert.doesNotMatch(untrusted.stderr, /\n\s+at /, 'no stack trace');

  const config = await writeConfig('with-ca.ini', ca.caFile);
  const upload = await cli(['packager', 'upload', '--all', '--config', config]);
  assert.equal(upload.code, 0, upload.stdout + upload.stderr);
  assert.match(upload.stdout, /s3:\/\/lab-packages\/autotest\/builtin.*published 6/);
  const list = await cli(['packager', 'list', '--config', config]);
  assert.equal(list.code, 0, list.stdout + list.stderr);
  assert.match(list.stdout, /s3:\/\/lab-packages\/autotest\/builtin \(upload_location\): 6 packages/);
  const verify = await cli(['packager', 'verify', '--config', config]);
  assert.equal(verify.code, 0, verify.stdout + verify.stderr);
});
