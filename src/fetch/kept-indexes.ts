import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { FetchTrust } from '../config/index.js';
import { writeFileAtomic } from '../fs/atomic.js';
import type { IndexTrust, SignedPair } from '../signing/index.js';
import { openSerialMemory } from './serials.js';

/** In the package cache: the last signed pair verified from each repository. */
const KEPT_DIR = '.verified';

function keptPath(cacheDir: string, repository: string): string {
  return path.join(cacheDir, KEPT_DIR, `${createHash('sha256').update(repository).digest('hex').slice(0, 32)}.json`);
}

/** Keeps the pair as it was read (both texts, byte for byte, so it verifies again later). */
export async function keepVerifiedIndex(cacheDir: string, repository: string, pair: SignedPair): Promise<void> {
  await mkdir(path.join(cacheDir, KEPT_DIR), { recursive: true });
  await writeFileAtomic(keptPath(cacheDir, repository), `${JSON.stringify({ repository, signature: pair.signature, manifest: pair.manifest })}\n`);
}

/** The pair last kept from `repository`, or undefined (none, or damaged: it would not verify either). */
export async function readKeptIndex(cacheDir: string, repository: string): Promise<SignedPair | undefined> {
  try {
    const data = JSON.parse(await readFile(keptPath(cacheDir, repository), 'utf8')) as Partial<SignedPair & { repository: string }> | null;
    if (data?.repository !== repository || typeof data.signature !== 'string' || typeof data.manifest !== 'string') return undefined;
    return { signature: data.signature, manifest: data.manifest };
  } catch {
    return undefined;
  }
}

/**
 * What a client of this machine trusts (trusted_keys, require_signature), with the serials it
 * has seen and the pairs it has verified kept in the package cache; none without trusted_keys.
 */
export async function openIndexTrust(trust: FetchTrust | undefined, cacheDir: string | undefined): Promise<IndexTrust | undefined> {
  if (!trust) return undefined;
  if (!trust.keys) throw new Error('trusted_keys used before loadConfig read it');
  return {
    keys: trust.keys,
    required: trust.required,
    // The newest serial seen from each repository lives with the package cache: a rollback is
    // refused by every later install on this machine, not only within this one.
    memory: await openSerialMemory(cacheDir),
    keep: cacheDir === undefined ? undefined : (repository, pair) => keepVerifiedIndex(cacheDir, repository, pair),
  };
}
