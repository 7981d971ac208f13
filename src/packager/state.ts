import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import { writeFileAtomic } from '../fs/atomic.js';

/**
 * What the packager remembers between runs, per client tree: for each package, the tree's
 * fingerprint (paths and stat data, no contents) at its last pack and what the pack gave.
 * A matching fingerprint means the package is unchanged without reading a byte of it.
 * The cache only ever saves work: a missing or unreadable one means "pack again".
 */
export interface PackRecord {
  fingerprint: string;
  sourceDigest: string;
  md5: string;
  sha256: string;
  size: number;
}

export interface PackState {
  get(fileName: string): PackRecord | undefined;
  set(fileName: string, record: PackRecord): void;
  save(): Promise<void>;
}

export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.AUTOTEST_CACHE_DIR) return path.resolve(env.AUTOTEST_CACHE_DIR);
  return path.join(env.XDG_CACHE_HOME ? path.resolve(env.XDG_CACHE_HOME) : path.join(homedir(), '.cache'), 'autotest');
}

function isRecord(value: unknown): value is PackRecord {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return (
    typeof v.fingerprint === 'string' &&
    typeof v.sourceDigest === 'string' &&
    typeof v.md5 === 'string' &&
    typeof v.sha256 === 'string' &&
    typeof v.size === 'number'
  );
}

async function readRecords(file: string): Promise<Map<string, PackRecord>> {
  const records = new Map<string, PackRecord>();
  try {
    const data: unknown = JSON.parse(await readFile(file, 'utf8'));
    if (typeof data === 'object' && data !== null) {
      for (const [name, record] of Object.entries(data)) if (isRecord(record)) records.set(name, record);
    }
  } catch {
    // No cache yet, or a damaged one: everything is packed again.
  }
  return records;
}

export async function openPackState(clientDir: string, dir = cacheDir()): Promise<PackState> {
  const file = path.join(dir, `packager-${createHash('sha256').update(clientDir).digest('hex').slice(0, 16)}.json`);
  const records = await readRecords(file);
  const changed = new Map<string, PackRecord>();
  return {
    get: (fileName) => records.get(fileName),
    set: (fileName, record) => {
      records.set(fileName, record);
      changed.set(fileName, record);
    },
    async save() {
      if (changed.size === 0) return;
      await mkdir(dir, { recursive: true });
      // Packagers running side by side each add their own records to what is there now.
      const current = await readRecords(file);
      for (const [name, record] of changed) current.set(name, record);
      await writeFileAtomic(file, JSON.stringify(Object.fromEntries(current)));
    },
  };
}
