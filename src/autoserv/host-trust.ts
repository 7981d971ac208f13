import { generateKeyPairSync } from 'node:crypto';
import path from 'node:path';
import type { FetchTrust } from '../config/index.js';
import { SIGNATURE_NAMESPACE, signSshsig, signingKeyFrom } from '../signing/index.js';
import { SERIALS_FILE } from '../fetch/serials.js';
import type { TestHost } from './host.js';

/** What a host was given to verify signed repositories with, and whether it can. */
export interface HostTrust {
  /** The allowed_signers file on the host (for ssh-keygen and for the job's client.ini). */
  trustedKeys: string;
  required: boolean;
  /** Why the host cannot run `ssh-keygen -Y verify`; undefined when it can. */
  cannotVerify: string | undefined;
}

/**
 * Written on the host as trusted_keys: each trusted key under the principal "autotest", so
 * that `ssh-keygen -Y verify -I autotest` accepts exactly the keys the client believes (every
 * key of trusted_keys, whatever its principal; see parseAllowedSigners).
 */
function allowedSignersFor(keys: readonly Buffer[]): string {
  return keys.map((blob) => `autotest namespaces="${SIGNATURE_NAMESPACE}" ssh-ed25519 ${blob.toString('base64')}\n`).join('');
}

const PROBE_MESSAGE = 'autotest: can this host verify SSH signatures?\n';

/**
 * A signature the host must accept, by a key made for this run: whether `ssh-keygen -Y
 * verify` works there (absent, or OpenSSH before 8.1, it does not) is learnt from what it
 * does, not from its version text or its error words.
 */
async function probeSignature(): Promise<{ signature: string; signer: string }> {
  const { privateKey } = generateKeyPairSync('ed25519');
  const jwk = privateKey.export({ format: 'jwk' });
  const key = signingKeyFrom({ publicKey: Buffer.from(jwk.x ?? '', 'base64url'), seed: Buffer.from(jwk.d ?? '', 'base64url') });
  return { signature: await signSshsig(Buffer.from(PROBE_MESSAGE), key, SIGNATURE_NAMESPACE), signer: `autotest ${key.publicLine}` };
}

/*
 * Run on the host with positional arguments only: $1 the trust folder, $2 the probe's
 * message, $3 its signature, $4 its allowed_signers line; the trusted keys on stdin.
 * Exit 4: the host cannot verify, the reason on stderr.
 */
const SEND_TRUST = `dir=$1; msg=$2; sig=$3; signer=$4
mkdir -p "$dir" && cat > "$dir/trusted_keys" && printf '%s' "$sig" > "$dir/probe.sig" && printf '%s\\n' "$signer" > "$dir/probe_signers" || exit 10
if ! command -v ssh-keygen >/dev/null 2>&1; then echo "no ssh-keygen on the host" >&2; exit 4; fi
if ! printf '%s' "$msg" | ssh-keygen -Y verify -f "$dir/probe_signers" -I autotest -n ${SIGNATURE_NAMESPACE} -s "$dir/probe.sig" >/dev/null 2>"$dir/probe.err"; then
  echo "its ssh-keygen cannot run -Y verify (OpenSSH 8.1 or later is needed): $(head -c 300 "$dir/probe.err" | tr '\\n' ' ')" >&2; exit 4
fi`;

/**
 * Sends trusted_keys to the host (beside the CA bundle) and checks that the host can verify
 * with it; none without trusted_keys.
 */
export async function sendTrust(host: TestHost, hostDir: string, trust: FetchTrust | undefined): Promise<HostTrust | undefined> {
  if (!trust?.keys) return undefined;
  const dir = path.posix.join(hostDir, 'trust');
  const probe = await probeSignature();
  const answer = await host.run(['sh', '-c', SEND_TRUST, 'sh', dir, PROBE_MESSAGE, probe.signature, probe.signer], {
    input: allowedSignersFor(trust.keys),
    allowCodes: [4],
  });
  return {
    trustedKeys: path.posix.join(dir, 'trusted_keys'),
    required: trust.required,
    cannotVerify: answer.code === 4 ? answer.stderr || 'ssh-keygen -Y verify failed' : undefined,
  };
}

/**
 * Run on the host by `node -e` once ssh-keygen has verified the manifest: argv 1 the
 * manifest, 2 the host's serial memory (the client's own, in its package cache), 3 the
 * repository's name there. Judges the manifest as the client does (serial, expiry,
 * rollback), remembers its serial, and prints the client package's `md5 sha256 size`;
 * else prints why and exits 1.
 */
export const READ_SIGNED_MANIFEST = `const fs = require('node:fs');
const path = require('node:path');
const [file, memory, name] = process.argv.slice(1);
const fail = (why) => { console.log(why); process.exit(1); };
let doc;
try { doc = JSON.parse(fs.readFileSync(file, 'utf8')); } catch { fail('its signed packages.json does not parse'); }
const serial = doc.serial;
if (!Number.isSafeInteger(serial)) fail('its signed packages.json has no serial');
if (doc.expires !== undefined && !(Date.parse(doc.expires) > Date.now())) fail('its signed packages.json expired at ' + doc.expires);
let seen = {};
try { seen = JSON.parse(fs.readFileSync(memory, 'utf8')); } catch {}
const newest = seen[name];
if (typeof newest === 'number' && serial < newest) fail('its signed packages.json has serial ' + serial + ', older than serial ' + newest + ' seen from it before (rolled back)');
const entry = (doc.packages || {})['client-autotest.tar.bz2'];
if (!entry) fail('no client package in its signed packages.json');
if (!/^[0-9a-f]{32}$/.test(entry.md5) || !/^[0-9a-f]{64}$/.test(entry.sha256) || !Number.isSafeInteger(entry.size)) fail('its signed entry of the client package has no md5, sha256 and size');
if (!(typeof newest === 'number' && newest >= serial)) {
  fs.mkdirSync(path.dirname(memory), { recursive: true });
  const temp = memory + '.' + process.pid + '.tmp';
  fs.writeFileSync(temp, JSON.stringify({ ...seen, [name]: serial }, null, 2) + '\\n');
  fs.renameSync(temp, memory);
}
console.log(entry.md5 + ' ' + entry.sha256 + ' ' + entry.size);`;

/** Where the client on the host keeps the serials it has seen: its package cache (the default, INSTALL_DIR/packages). */
export function hostSerialMemory(hostDir: string): string {
  return path.posix.join(hostDir, 'packages', SERIALS_FILE);
}

export function cannotVerifyReason(trust: HostTrust): string {
  return `refused: trusted_keys is set and the host cannot verify signed repositories (${trust.cannotVerify ?? ''})`;
}
