import { setTimeout as sleep } from 'node:timers/promises';
import { AutotestError } from '../errors.js';
import { MANIFEST_FILE, SIGNATURE_FILE, parseManifestDocument, type ManifestHeader, type RepositoryIndex } from '../packages/index.js';
import { readSigningKey, type SigningKey } from './openssh-key.js';
import { signSshsig, verifySshsig } from './sshsig.js';

/** The SSHSIG namespace of repository manifests: `ssh-keygen -Y verify -n autotest-packages`. */
export const SIGNATURE_NAMESPACE = 'autotest-packages';

const DAY_MS = 24 * 3600 * 1000;

/** How a packager signs the manifests it writes. */
export interface IndexSigning {
  key: SigningKey;
  /** index_valid_days: the manifest's `expires`, from the time of signing; none: never. */
  validDays: number | undefined;
}

/** signing_key read (once, by a command that writes indexes), with index_valid_days; none without signing_key. */
export async function loadIndexSigning(settings: {
  signingKey: { file: string; setAt: string } | undefined;
  indexValidDays: number | undefined;
}): Promise<IndexSigning | undefined> {
  if (!settings.signingKey) return undefined;
  return { key: await readSigningKey(settings.signingKey.file, settings.signingKey.setAt), validDays: settings.indexValidDays };
}

/**
 * The header of the next manifest: a serial above the last one and above the time in
 * seconds, so that a repository whose manifest was lost and rebuilt still goes forward
 * for the clients that remember its old serial.
 */
export function nextManifestHeader(previous: ManifestHeader | undefined, validDays: number | undefined, now = Date.now()): ManifestHeader {
  const serial = Math.max((previous?.serial ?? 0) + 1, Math.floor(now / 1000));
  return { serial, expires: validDays === undefined ? undefined : new Date(now + validDays * DAY_MS).toISOString() };
}

export function signManifest(manifestText: string, key: SigningKey): Promise<string> {
  return signSshsig(Buffer.from(manifestText, 'utf8'), key, SIGNATURE_NAMESPACE);
}

/** The newest serial this machine has verified from each repository (kept in the package cache). */
export interface SerialMemory {
  newest(repository: string): number | undefined;
  remember(repository: string, serial: number): Promise<void>;
}

/** A manifest and its signature as read from a repository. */
export interface SignedPair {
  signature: string;
  manifest: string;
}

/** What a client trusts: trusted_keys, require_signature and what it has seen before. */
export interface IndexTrust {
  keys: readonly Buffer[];
  required: boolean;
  memory: SerialMemory | undefined;
  /** Keeps each pair that verified, for installs without a connection (see verifyKeptIndex). */
  keep?: ((repository: string, pair: SignedPair) => Promise<void>) | undefined;
}

export interface VerifiedIndex {
  index: RepositoryIndex;
  header: ManifestHeader;
}

function refused(name: string, why: string, hint: string): AutotestError {
  return new AutotestError('ERR_SIGNATURE', `${name}: ${why}; not believed`, { hint });
}

const KEY_HINT = 'sign the repository with "autotest packager sign", or add its key to trusted_keys ([PACKAGES])';

/**
 * Judges one pair read from a repository: its signature by a trusted key, then its expiry
 * and serial. Returns why it is refused, or the index it holds.
 */
type Judgement =
  | { verified: VerifiedIndex }
  /** `settled`: the pair verified and is refused for what it says (expired, rolled back): reading it again changes nothing. */
  | { refusal: AutotestError; settled: boolean };

function judge(name: string, signature: string | undefined, manifest: string | undefined, trust: IndexTrust, now: number): Judgement {
  const unverified = (why: string): Judgement => ({ refusal: refused(name, why, KEY_HINT), settled: false });
  if (manifest === undefined) return unverified(`has no ${MANIFEST_FILE} to verify`);
  if (signature === undefined) return unverified(`has no ${SIGNATURE_FILE} (unsigned) and require_signature is on`);
  const verdict = verifySshsig(signature, Buffer.from(manifest, 'utf8'), SIGNATURE_NAMESPACE, trust.keys);
  if (!verdict.valid) return unverified(`${SIGNATURE_FILE} is wrong: ${verdict.why}`);
  const document = parseManifestDocument(manifest, `${name}/${MANIFEST_FILE}`);
  const { serial, expires } = document.header;
  if (serial === undefined)
    return { refusal: refused(name, `its signed ${MANIFEST_FILE} has no serial`, 'sign it again with "autotest packager sign"'), settled: true };
  if (expires !== undefined && Date.parse(expires) <= now) {
    return {
      refusal: refused(
        name,
        `its signed ${MANIFEST_FILE} expired at ${expires}`,
        'renew it with "autotest packager sign" (index_valid_days); a mirror that serves it has stopped following its source',
      ),
      settled: true,
    };
  }
  const newest = trust.memory?.newest(name);
  if (newest !== undefined && serial < newest) {
    return {
      refusal: refused(
        name,
        `its signed ${MANIFEST_FILE} has serial ${serial.toString()}, older than serial ${newest.toString()} seen from it before (rolled back)`,
        'a mirror serving an old index is stale or hostile; update it from its source',
      ),
      settled: true,
    };
  }
  return { verified: document };
}

/** Pauses before reading a pair again: a packager replaces both within moments. */
const REREAD_PAUSES_MS = [50, 250, 1000];

/**
 * Reads and verifies a repository's signed manifest through `read` (the text of a file, or
 * undefined when there is none). The signature is read before the manifest: a packager
 * writes the manifest first, so a pair read in this order while it replaces them is at worst
 * an old signature with a new manifest, never a new signature with an old manifest. Any pair
 * that does not verify is read again (a few times, with pauses) before the repository is
 * judged: a legitimate replacement is never taken for a forgery.
 *
 * With no signature and require_signature off, returns undefined: the caller reads the
 * unsigned index as before.
 */
export async function readVerifiedIndex(
  name: string,
  read: (file: string) => Promise<string | undefined>,
  trust: IndexTrust,
  now = Date.now,
): Promise<VerifiedIndex | undefined> {
  for (let attempt = 0; ; attempt += 1) {
    const signature = await read(SIGNATURE_FILE);
    if (signature === undefined && !trust.required) return undefined;
    const manifest = await read(MANIFEST_FILE);
    const judgement = judge(name, signature, manifest, trust, now());
    if ('verified' in judgement) {
      const { serial } = judgement.verified.header;
      if (serial !== undefined) await trust.memory?.remember(name, serial);
      if (signature !== undefined && manifest !== undefined) await trust.keep?.(name, { signature, manifest });
      return judgement.verified;
    }
    const pause = REREAD_PAUSES_MS[attempt];
    if (pause === undefined || judgement.settled) throw judgement.refusal;
    await sleep(pause);
  }
}

/**
 * Judges a pair kept from an earlier verification as if it had just been read: the trusted
 * keys of now (a key removed since is no longer believed), its expiry against the clock of
 * now, its serial against the newest seen. Throws the refusal, as readVerifiedIndex would.
 */
export function verifyKeptIndex(name: string, pair: SignedPair, trust: IndexTrust, now = Date.now()): VerifiedIndex {
  const judgement = judge(name, pair.signature, pair.manifest, trust, now);
  if ('verified' in judgement) return judgement.verified;
  throw judgement.refusal;
}
