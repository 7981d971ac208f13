import { mkdir, readdir, rename, rm, stat, statfs } from 'node:fs/promises';
import path from 'node:path';
import type { FastifyBaseLogger } from 'fastify';
import { AutotestError, describeError, errnoCode } from '../errors.js';
import { isTempName, tempPathFor } from '../fs/atomic.js';
import type { IndexEntry } from '../packages/index.js';
import type { CacheMetrics } from './metrics.js';

/** Entries are named by the checksum they were verified against, so a name is its own proof. */
const ENTRY_RE = /^(?:sha256-[0-9a-f]{64}|md5-[0-9a-f]{32})$/;

/** Left free on the disk beyond a download's size: the index files kept and the file system's own needs. */
const DISK_MARGIN_BYTES = 4 * 1024 * 1024;

/** The key an index entry is verified against and stored under. */
export function entryKey(entry: IndexEntry): string {
  return entry.sha256 === undefined ? `md5-${entry.md5}` : `sha256-${entry.sha256}`;
}

interface Entry {
  size: number;
  /** Order of last use: a counter, not a clock, so that ties cannot happen. */
  used: number;
  /** Answers reading the entry now: it is never evicted while this is above 0. */
  pins: number;
}

/**
 * The caching front's content: verified package files named `sha256-HEX` (or `md5-HEX` for an
 * Autotest-only index) in one folder, shared by every served repository, bounded by size with
 * least-recently-used eviction. Nothing enters but through commit(), which renames a synced,
 * verified temp file: after a crash only complete entries and temp files are left, and the
 * temps are removed when the store opens again.
 */
export interface CacheStore {
  /** Path of a verified entry, pinned until `release` is called; undefined when absent. */
  acquire(key: string): { path: string; size: number; release: () => void } | undefined;
  /** A temp path in the store's folder for a download of `key`. */
  tempPath(key: string): string;
  /**
   * Moves a synced, verified temp file in as `key`. Nothing is evicted until trim(): the
   * answers still reading the download pin the new entry first.
   */
  commit(temp: string, key: string, size: number): Promise<void>;
  /** Evicts least recently used entries that no answer holds until the store is within its bound. */
  trim(): Promise<void>;
  /**
   * Whether the disk has room for `bytes` more (and a margin): when it has not, least recently
   * used entries that no answer holds are evicted until it has, or none is left to evict.
   */
  room(bytes: number): Promise<boolean>;
  /** Index files of served repository `name` kept for outages: `dir/index/NAME/`. */
  indexDir(name: string): string;
  /** The size of entry `key`, undefined when absent (for the frontend; nothing pinned). */
  sizeOf(key: string): number | undefined;
}

export interface CacheStoreOptions {
  dir: string;
  sizeBytes: number;
  metrics: CacheMetrics;
  log: FastifyBaseLogger;
}

export async function openCacheStore(options: CacheStoreOptions): Promise<CacheStore> {
  const contentDir = path.join(options.dir, 'content');
  try {
    await mkdir(contentDir, { recursive: true });
    await mkdir(path.join(options.dir, 'index'), { recursive: true });
  } catch (error) {
    throw new AutotestError('ERR_CONFIG', `[SERVER] cache_dir ${options.dir}: cannot be made a folder (${errnoCode(error) ?? describeError(error)})`, {
      hint: 'point cache_dir at a folder the server may create and write to',
      cause: error,
    });
  }
  const entries = new Map<string, Entry>();
  let bytes = 0;
  let clock = 0;
  const found: { name: string; size: number; mtimeMs: number }[] = [];
  for (const name of await readdir(contentDir)) {
    const file = path.join(contentDir, name);
    // A temp file is a download a previous run did not finish (or did not verify): never an entry.
    if (isTempName(name) || !ENTRY_RE.test(name)) {
      await rm(file, { force: true, recursive: true });
      continue;
    }
    const info = await stat(file);
    found.push({ name, size: info.size, mtimeMs: info.mtimeMs });
  }
  // The previous run's order of use is lost; the order of arrival is the best guess.
  for (const { name, size } of found.sort((a, b) => a.mtimeMs - b.mtimeMs)) {
    entries.set(name, { size, used: (clock += 1), pins: 0 });
    bytes += size;
  }
  options.metrics.cacheBytes.set(bytes);

  /** Evicts unpinned entries, least recently used first, until `enough` says so. */
  const evictUntil = async (enough: () => Promise<boolean> | boolean): Promise<boolean> => {
    if (await enough()) return true;
    const victims = [...entries.entries()].filter(([, entry]) => entry.pins === 0).sort((a, b) => a[1].used - b[1].used);
    for (const [key, entry] of victims) {
      // Pinned since the list was made: an answer is reading it now.
      if (entry.pins > 0 || entries.get(key) !== entry) continue;
      entries.delete(key);
      bytes -= entry.size;
      options.metrics.evictions.inc();
      await rm(path.join(contentDir, key), { force: true });
      options.metrics.cacheBytes.set(bytes);
      if (await enough()) return true;
    }
    return enough();
  };
  const evict = async (): Promise<void> => {
    await evictUntil(() => bytes <= options.sizeBytes);
  };
  const free = async (): Promise<number> => {
    const fs = await statfs(contentDir);
    return fs.bavail * fs.bsize;
  };

  return {
    acquire(key) {
      const entry = entries.get(key);
      if (!entry) return undefined;
      entry.used = clock += 1;
      entry.pins += 1;
      let released = false;
      return {
        path: path.join(contentDir, key),
        size: entry.size,
        release: () => {
          if (released) return;
          released = true;
          entry.pins -= 1;
          // An entry pinned while the store was over its bound goes once its last reader leaves.
          if (entry.pins === 0 && bytes > options.sizeBytes) void evict();
        },
      };
    },
    tempPath: (key) => tempPathFor(path.join(contentDir, key)),
    async commit(temp, key, size) {
      const target = path.join(contentDir, key);
      await rename(temp, target);
      const previous = entries.get(key);
      if (previous) bytes -= previous.size;
      entries.set(key, { size, used: (clock += 1), pins: previous?.pins ?? 0 });
      bytes += size;
      options.metrics.cacheBytes.set(bytes);
    },
    trim: evict,
    room: (wanted) => evictUntil(async () => (await free()) >= wanted + DISK_MARGIN_BYTES),
    indexDir: (name) => path.join(options.dir, 'index', name),
    sizeOf: (key) => entries.get(key)?.size,
  };
}
