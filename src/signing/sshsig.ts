import { createHash, verify } from 'node:crypto';
import { ed25519PublicKey, type SigningKey } from './openssh-key.js';
import { ED25519, WireReader, ed25519FromBlob, sshString, sshUint32 } from './wire.js';

/**
 * OpenSSH's detached signature format (PROTOCOL.sshsig), what `ssh-keygen -Y sign` writes and
 * `ssh-keygen -Y verify` reads: the namespace is signed too, so a signature made for one
 * purpose (say, git commits) is never accepted for another.
 */
const MAGIC = Buffer.from('SSHSIG', 'latin1');
const VERSION = 1;
const BEGIN = '-----BEGIN SSH SIGNATURE-----';
const END = '-----END SSH SIGNATURE-----';
const HASHES = new Set(['sha512', 'sha256']);

/** The bytes the key signs: magic, namespace, reserved, hash algorithm, H(message). */
function signedData(namespace: string, hashAlgorithm: string, message: Buffer): Buffer {
  const digest = createHash(hashAlgorithm).update(message).digest();
  return Buffer.concat([MAGIC, sshString(namespace), sshString(''), sshString(hashAlgorithm), sshString(digest)]);
}

/** An armored SSHSIG signature of `message`, as ssh-keygen writes it (base64 wrapped at 70 columns). */
export async function signSshsig(message: Buffer, key: SigningKey, namespace: string): Promise<string> {
  const hashAlgorithm = 'sha512';
  const signature = await key.sign(signedData(namespace, hashAlgorithm, message));
  const blob = Buffer.concat([
    MAGIC,
    sshUint32(VERSION),
    sshString(key.publicBlob),
    sshString(namespace),
    sshString(''),
    sshString(hashAlgorithm),
    sshString(Buffer.concat([sshString(ED25519), sshString(signature)])),
  ]);
  const lines = blob.toString('base64').match(/.{1,70}/g) ?? [];
  return `${BEGIN}\n${lines.join('\n')}\n${END}\n`;
}

/** Whether `signature` is a valid signature of `message` by one of `keys` in `namespace`. */
export type SshsigVerdict = { valid: true; publicBlob: Buffer } | { valid: false; why: string };

function unarmor(text: string): Buffer | undefined {
  const start = text.indexOf(BEGIN);
  const end = text.indexOf(END);
  if (start < 0 || end < start) return undefined;
  return Buffer.from(text.slice(start + BEGIN.length, end).replace(/\s+/g, ''), 'base64');
}

/**
 * Checks an armored SSHSIG signature against the trusted public key blobs. The message is
 * judged only through the signature: a signer outside `trusted`, another namespace, a key
 * type other than ed25519 or a bad signature are each said as such.
 */
export function verifySshsig(armored: string, message: Buffer, namespace: string, trusted: readonly Buffer[]): SshsigVerdict {
  const blob = unarmor(armored);
  if (!blob) return { valid: false, why: 'not an SSH signature (no "-----BEGIN SSH SIGNATURE-----" block)' };
  try {
    if (!blob.subarray(0, MAGIC.length).equals(MAGIC)) return { valid: false, why: 'not an SSHSIG blob' };
    const reader = new WireReader(blob.subarray(MAGIC.length));
    const version = reader.uint32();
    if (version !== VERSION) return { valid: false, why: `SSHSIG version ${version.toString()} (only ${VERSION.toString()} is known)` };
    const publicBlob = reader.string();
    const signedNamespace = reader.text();
    reader.string();
    const hashAlgorithm = reader.text();
    const signature = new WireReader(reader.string());
    if (signedNamespace !== namespace) return { valid: false, why: `signed for the namespace "${signedNamespace}", not "${namespace}"` };
    if (!HASHES.has(hashAlgorithm)) return { valid: false, why: `unknown hash algorithm "${hashAlgorithm}"` };
    const publicKey = ed25519FromBlob(publicBlob);
    if (!publicKey) return { valid: false, why: 'signed by a key that is not ed25519' };
    if (!trusted.some((key) => key.equals(publicBlob))) return { valid: false, why: `signed by a key not in trusted_keys (${fingerprint(publicBlob)})` };
    if (signature.text() !== ED25519) return { valid: false, why: 'not an ed25519 signature' };
    const raw = signature.string();
    if (!verify(null, signedData(namespace, hashAlgorithm, message), ed25519PublicKey(publicKey), raw)) {
      return { valid: false, why: `its signature by ${fingerprint(publicBlob)} does not match the manifest` };
    }
    return { valid: true, publicBlob: Buffer.from(publicBlob) };
  } catch {
    return { valid: false, why: 'a truncated or damaged SSH signature' };
  }
}

/**
 * The key an armored SSHSIG signature names as its signer, undefined when it names none.
 * Believed for nothing by itself: it says whether a signature is still its signer's of a
 * given message (verifySshsig with that one key), that is, not left over from another one.
 */
export function signerOf(armored: string): Buffer | undefined {
  const blob = unarmor(armored);
  if (!blob?.subarray(0, MAGIC.length).equals(MAGIC)) return undefined;
  try {
    const reader = new WireReader(blob.subarray(MAGIC.length));
    reader.uint32();
    return Buffer.from(reader.string());
  } catch {
    return undefined;
  }
}

/** OpenSSH's key fingerprint, as `ssh-keygen -l` shows it: SHA256:BASE64 without padding. */
export function fingerprint(publicBlob: Buffer): string {
  return `SHA256:${createHash('sha256').update(publicBlob).digest('base64').replace(/=+$/, '')}`;
}
