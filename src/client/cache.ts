import { mkdir, readFile, readdir, rm, stat, utimes } from 'node:fs/promises';
import path from 'node:path';
import { isAutotestError } from '../errors.js';
import { writeFileAtomic } from '../fs/atomic.js';
import { parseFileName, type IndexEntry, type PackageType } from '../packages/index.js';
import { spawnLocalFlock, withHeldLock } from '../repositories/lock.js';

/**
 * The package cache: tarballs by file name, the index entry each was verified against (so an
 * offline install can verify it again without a repository), and the per-package locks.
 */
const ENTRIES_DIR = '.index';
const LOCKS_DIR = '.locks';

/** The lock every install of one package on this machine takes, whatever file name it has. */
export function packageLockPath(cacheDir: string, type: PackageType, name: string): string {
  return path.join(cacheDir, LOCKS_DIR, `${type}-${name}.lock`);
}

function entryPath(cacheDir: string, type: PackageType, name: string): string {
  return path.join(cacheDir, ENTRIES_DIR, `${type}-${name}.json`);
}

/** Keeps the index entry the package's cached tarball and installed folder were verified against. */
export async function storeEntry(cacheDir: string, type: PackageType, name: string, entry: IndexEntry): Promise<void> {
  await mkdir(path.join(cacheDir, ENTRIES_DIR), { recursive: true });
  const { file, md5, sha256, size } = entry;
  await writeFileAtomic(entryPath(cacheDir, type, name), `${JSON.stringify({ file, md5, sha256, size })}\n`);
}

/** The entry stored by the last install of the package, if any (a damaged one counts as none). */
export async function readStoredEntry(cacheDir: string, type: PackageType, name: string): Promise<IndexEntry | undefined> {
  try {
    const data = JSON.parse(await readFile(entryPath(cacheDir, type, name), 'utf8')) as Partial<IndexEntry> | null;
    if (typeof data?.file !== 'string' || typeof data.md5 !== 'string' || path.basename(data.file) !== data.file) return undefined;
    return {
      file: data.file,
      md5: data.md5,
      sha256: typeof data.sha256 === 'string' ? data.sha256 : undefined,
      size: typeof data.size === 'number' ? data.size : undefined,
    };
  } catch {
    return undefined;
  }
}

/** Marks a cached tarball as just used: the cache is trimmed by least recent use. */
export async function touchCached(file: string): Promise<void> {
  const now = new Date();
  await utimes(file, now, now).catch(() => undefined);
}

export interface CachedTarball {
  file: string;
  bytes: number;
  /** Epoch ms of its last use (its mtime, set at every use). */
  lastUse: number;
}

/**
 * The tarballs that may go, least recently used first (none when all fit in `limitBytes`):
 * the caller removes them in this order until the rest fit, passing over any in use.
 */
export function evictionOrder(tarballs: readonly CachedTarball[], limitBytes: number): CachedTarball[] {
  const total = tarballs.reduce((sum, t) => sum + t.bytes, 0);
  if (total <= limitBytes) return [];
  return [...tarballs].sort((a, b) => a.lastUse - b.lastUse || a.file.localeCompare(b.file));
}

export interface TrimReport {
  removed: string[];
  /** Passed over because another install held the package's lock. */
  inUse: string[];
  bytesLeft: number;
}

/**
 * Trims the package cache to `limitBytes` by least recent use. A tarball whose package lock
 * another install holds is in use and never removed; installed folders are not in the cache
 * and never touched. A partial download (.part) is someone's work in progress and is left.
 */
export async function trimCache(cacheDir: string, limitBytes: number): Promise<TrimReport> {
  const tarballs: CachedTarball[] = [];
  for (const file of await readdir(cacheDir).catch(() => [])) {
    const parsed = (() => {
      try {
        return parseFileName(file);
      } catch {
        return undefined;
      }
    })();
    if (parsed?.type === undefined) continue;
    const info = await stat(path.join(cacheDir, file)).catch(() => undefined);
    if (info?.isFile()) tarballs.push({ file, bytes: info.size, lastUse: info.mtimeMs });
  }
  const report: TrimReport = { removed: [], inUse: [], bytesLeft: tarballs.reduce((sum, t) => sum + t.bytes, 0) };
  for (const tarball of evictionOrder(tarballs, limitBytes)) {
    if (report.bytesLeft <= limitBytes) break;
    const { type, name } = parseFileName(tarball.file);
    if (type === undefined) continue;
    try {
      // Zero wait: a held lock means an install of this package is under way right now.
      await withHeldLock(spawnLocalFlock(packageLockPath(cacheDir, type, name), 0), `package cache ${cacheDir}`, () =>
        rm(path.join(cacheDir, tarball.file), { force: true }),
      );
      report.removed.push(tarball.file);
      report.bytesLeft -= tarball.bytes;
    } catch (error) {
      if (!isAutotestError(error, 'ERR_LOCK')) throw error;
      report.inUse.push(tarball.file);
    }
  }
  return report;
}
