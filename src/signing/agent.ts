import net from 'node:net';
import { AutotestError, describeError } from '../errors.js';
import type { SigningKey } from './openssh-key.js';
import { ED25519, WireReader, ed25519FromBlob, sshString, sshUint32 } from './wire.js';

/*
 * The ssh-agent protocol (draft-miller-ssh-agent): each message is a uint32 length, a type
 * byte and its fields. We ask for the keys the agent holds and for signatures, nothing more.
 */
const AGENT_FAILURE = 5;
const AGENTC_REQUEST_IDENTITIES = 11;
const AGENT_IDENTITIES_ANSWER = 12;
const AGENTC_SIGN_REQUEST = 13;
const AGENT_SIGN_RESPONSE = 14;
/** Longest an agent may take to answer (one holding a confirm-before-use key waits for a person). */
const AGENT_TIMEOUT_MS = 60_000;

/** One request to the agent at `socket`, its answer's payload (type byte first). Throws a plain Error saying what failed. */
function askAgent(socket: string, payload: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const connection = net.createConnection(socket);
    let received = Buffer.alloc(0);
    const fail = (why: string): void => {
      connection.destroy();
      reject(new Error(why));
    };
    connection.setTimeout(AGENT_TIMEOUT_MS, () => {
      fail(`ssh-agent at ${socket} did not answer within ${(AGENT_TIMEOUT_MS / 1000).toString()} s`);
    });
    connection.on('error', (error: NodeJS.ErrnoException) => {
      fail(`cannot reach ssh-agent at ${socket} (${error.code ?? error.message})`);
    });
    connection.on('connect', () => {
      connection.write(Buffer.concat([sshUint32(payload.length), payload]));
    });
    connection.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length < 4) return;
      const length = received.readUInt32BE(0);
      if (length > 256 * 1024) {
        fail(`ssh-agent at ${socket} sent a ${length.toString()}-byte answer`);
        return;
      }
      if (received.length < 4 + length) return;
      connection.end();
      resolve(received.subarray(4, 4 + length));
    });
    connection.on('end', () => {
      fail(`ssh-agent at ${socket} closed the connection without an answer`);
    });
  });
}

/** The public key blobs the agent holds. */
export async function agentKeys(socket: string): Promise<Buffer[]> {
  const answer = await askAgent(socket, Buffer.from([AGENTC_REQUEST_IDENTITIES]));
  if (answer[0] !== AGENT_IDENTITIES_ANSWER) throw new Error(`ssh-agent at ${socket} refused to list its keys`);
  const reader = new WireReader(answer.subarray(1));
  const keys: Buffer[] = [];
  for (let count = reader.uint32(); count > 0; count -= 1) {
    keys.push(Buffer.from(reader.string()));
    reader.string();
  }
  return keys;
}

/** A signature of `data` by the agent's key `publicBlob`: the raw 64 bytes of an ed25519 signature. */
async function agentSign(socket: string, publicBlob: Buffer, data: Buffer): Promise<Buffer> {
  const answer = await askAgent(socket, Buffer.concat([Buffer.from([AGENTC_SIGN_REQUEST]), sshString(publicBlob), sshString(data), sshUint32(0)]));
  if (answer[0] === AGENT_FAILURE) throw new Error(`ssh-agent at ${socket} refused to sign (the key is no longer held, or its use was not confirmed)`);
  if (answer[0] !== AGENT_SIGN_RESPONSE) throw new Error(`ssh-agent at ${socket} answered a signing request with message ${String(answer[0])}`);
  const signature = new WireReader(new WireReader(answer.subarray(1)).string());
  if (signature.text() !== ED25519) throw new Error(`ssh-agent at ${socket} signed with another algorithm than ${ED25519}`);
  const raw = signature.string();
  if (raw.length !== 64) throw new Error(`ssh-agent at ${socket} sent a ${raw.length.toString()}-byte ed25519 signature`);
  return Buffer.from(raw);
}

/**
 * An OpenSSH one-line public key (`ssh-ed25519 BASE64 [comment]`, a `.pub` file), as the
 * blob; undefined for anything else (a private key file, say). Throws a plain Error for a
 * public key of another type.
 */
export function parsePublicKeyLine(text: string): Buffer | undefined {
  const [type, base64] = text.trim().split(/\s+/);
  if (type === undefined || base64 === undefined || text.trim().includes('\n') || !/^(ssh-|ecdsa-|sk-)/.test(type)) return undefined;
  const blob = Buffer.from(base64, 'base64');
  if (type !== ED25519 || !ed25519FromBlob(blob)) throw new Error(`a ${type} public key: only ed25519 keys sign repositories`);
  return blob;
}

/**
 * A signing key whose private half ssh-agent holds (at `socket`, SSH_AUTH_SOCK): checked
 * once here, so that a missing agent or key is said when the config is read, not after the
 * packages are uploaded. Throws a plain Error saying what is missing.
 */
export async function agentSigningKey(publicBlob: Buffer, socket: string | undefined): Promise<SigningKey> {
  if (socket === undefined || socket === '') throw new Error('a public key, whose private key must be held by ssh-agent, but SSH_AUTH_SOCK is not set');
  const held = await agentKeys(socket);
  if (!held.some((key) => key.equals(publicBlob))) throw new Error(`a public key that ssh-agent at ${socket} does not hold (ssh-add the private key)`);
  return {
    publicBlob,
    publicLine: `${ED25519} ${publicBlob.toString('base64')}`,
    // Checked when the config was read, the agent may still fail at signing time (gone, key removed, use refused).
    sign: (data) =>
      agentSign(socket, publicBlob, data).catch((error: unknown) => {
        throw new AutotestError('ERR_SIGNATURE', describeError(error), {
          hint: 'keep ssh-agent running with the signing key added (ssh-add) until the index is signed',
          cause: error,
        });
      }),
  };
}
