import { createPrivateKey, createPublicKey, sign, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { AutotestError, describeError, errnoCode } from '../errors.js';
import { agentSigningKey, parsePublicKeyLine } from './agent.js';
import { ED25519, WireReader, ed25519Blob, ed25519FromBlob } from './wire.js';

/** A key that signs: the private key stays inside `sign`. */
export interface SigningKey {
  /** The public key blob (what SSHSIG and allowed_signers carry). */
  publicBlob: Buffer;
  /** The OpenSSH one-line public key, `ssh-ed25519 BASE64`. */
  publicLine: string;
  /** The signature of `data` (ed25519: 64 bytes). */
  sign(data: Buffer): Promise<Buffer>;
}

const BEGIN = '-----BEGIN OPENSSH PRIVATE KEY-----';
const END = '-----END OPENSSH PRIVATE KEY-----';
const MAGIC = Buffer.from('openssh-key-v1\0', 'latin1');

/** An Ed25519 KeyObject from its raw parts, through JWK (Node reads no raw OpenSSH key). */
export function ed25519PublicKey(publicKey: Buffer): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: publicKey.toString('base64url') }, format: 'jwk' });
}

/**
 * Reads an unencrypted ed25519 key in OpenSSH's own format ("openssh-key-v1", what
 * `ssh-keygen -t ed25519 -N ''` writes): magic, cipher "none", kdf "none", one public key,
 * then the private section (two equal check words, key type, public key, seed + public key,
 * comment, padding). Throws a plain Error saying what is wrong; the caller names the file.
 */
export function parseOpenSshEd25519(text: string): { publicKey: Buffer; seed: Buffer } {
  const start = text.indexOf(BEGIN);
  const end = text.indexOf(END);
  if (start < 0 || end < start) throw new Error(`not an OpenSSH private key (no "${BEGIN}" block)`);
  const body = Buffer.from(text.slice(start + BEGIN.length, end).replace(/\s+/g, ''), 'base64');
  if (!body.subarray(0, MAGIC.length).equals(MAGIC)) throw new Error('not an openssh-key-v1 key');
  // A read past the end throws TruncatedWire ('truncated or damaged'), which the caller words with the file.
  const reader = new WireReader(body.subarray(MAGIC.length));
  const cipher = reader.text();
  const kdf = reader.text();
  reader.string();
  if (cipher !== 'none' || kdf !== 'none') throw new Error(`encrypted with a passphrase (${cipher}); an unattended signer needs a key without one`);
  if (reader.uint32() !== 1) throw new Error('holds more than one key');
  const publicKey = ed25519FromBlob(reader.string());
  if (!publicKey) throw new Error('not an ed25519 key (make one with ssh-keygen -t ed25519)');
  const secret = new WireReader(reader.string());
  if (secret.uint32() !== secret.uint32()) throw new Error('damaged (check words differ)');
  if (secret.text() !== ED25519) throw new Error('not an ed25519 key');
  const inner = secret.string();
  const pair = secret.string();
  if (!inner.equals(publicKey) || pair.length !== 64 || !pair.subarray(32).equals(publicKey)) throw new Error('damaged (its public and private parts differ)');
  return { publicKey, seed: Buffer.from(pair.subarray(0, 32)) };
}

export function signingKeyFrom(parts: { publicKey: Buffer; seed: Buffer }): SigningKey {
  const key = createPrivateKey({
    key: { kty: 'OKP', crv: 'Ed25519', d: parts.seed.toString('base64url'), x: parts.publicKey.toString('base64url') },
    format: 'jwk',
  });
  const publicBlob = ed25519Blob(parts.publicKey);
  return {
    publicBlob,
    publicLine: `${ED25519} ${publicBlob.toString('base64')}`,
    sign: (data) => Promise.resolve(sign(null, data, key)),
  };
}

/**
 * signing_key read and checked, or a config error naming where it was set (`setAt`): an
 * OpenSSH ed25519 private key, or the public key (`.pub`) of one that ssh-agent holds at
 * `agentSocket` (SSH_AUTH_SOCK), which then signs through the agent.
 */
export async function readSigningKey(file: string, setAt: string, agentSocket = process.env.SSH_AUTH_SOCK): Promise<SigningKey> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new AutotestError('ERR_CONFIG', `${setAt} = ${file}: cannot read it (${errnoCode(error) ?? describeError(error)})`, {
      hint: 'name a readable OpenSSH ed25519 private key (ssh-keygen -t ed25519 -N "" -f FILE), or leave signing_key empty',
      cause: error,
    });
  }
  let publicBlob: Buffer | undefined;
  try {
    publicBlob = parsePublicKeyLine(text);
    if (publicBlob === undefined) return signingKeyFrom(parseOpenSshEd25519(text));
  } catch (error) {
    throw new AutotestError('ERR_CONFIG', `${setAt} = ${file}: ${describeError(error)}`, {
      hint: 'make a key with: ssh-keygen -t ed25519 -N "" -f FILE (or name the .pub of an ed25519 key held by ssh-agent)',
      cause: error,
    });
  }
  try {
    return await agentSigningKey(publicBlob, agentSocket);
  } catch (error) {
    throw new AutotestError('ERR_CONFIG', `${setAt} = ${file}: ${describeError(error)}`, {
      hint: 'start ssh-agent, ssh-add the private key, and run with its SSH_AUTH_SOCK in the environment',
      cause: error,
    });
  }
}
