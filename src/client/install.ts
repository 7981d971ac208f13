import { randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import pLimit from 'p-limit';
import { COMPRESSIONS, describeLocation, flattenFetchLocations, type FetchLocation, type FetchSettings } from '../config/index.js';
import { AutotestError, errnoCode, isAutotestError } from '../errors.js';
import { fsyncPath, removeDeadTemps, tempPathFor } from '../fs/atomic.js';
import type { Resources } from '../resources.js';
import { PackageFetcher, openIndexTrust, readKeptIndex, type DownloadProgress } from '../fetch/index.js';
import {
  checkName,
  digestFile,
  extractTarball,
  matchesEntry,
  packageFileName,
  type IndexEntry,
  type PackageType,
  type RepositoryIndex,
} from '../packages/index.js';
import { spawnLocalFlock, withHeldLock } from '../repositories/lock.js';
import { verifyKeptIndex } from '../signing/index.js';
import { packageLockPath, readStoredEntry, storeEntry, touchCached, trimCache } from './cache.js';

/** The marker an installed package folder carries: the md5 of the tarball it came from. */
export const MARKER_FILE = '.checksum';

const TYPE_FOLDERS: Record<PackageType, string> = { client: '', test: 'tests', dep: 'deps', profiler: 'profilers' };

export interface InstallOptions {
  locations: FetchLocation[];
  settings: FetchSettings;
  /** The client's install folder: tests/, deps/, profilers/ and client/ go under it. */
  installDir: string;
  /** The package cache (tarballs kept between jobs); default installDir/packages. */
  cacheDir?: string;
  jobs?: number;
  /** Sees each download's bytes as they reach the package cache. */
  onProgress?: (progress: DownloadProgress) => void;
  /** Hears what was wrong in a repository's index that was used all the same. */
  onWarning?: (message: string) => void;
  /** Only what is installed or cached, verified against the entry stored with it: no connection at all. */
  offline?: boolean;
  /** client_cache_size: the package cache is trimmed to this after each install; undefined or 0: unbounded. */
  cacheSizeBytes?: number;
  /** The command's connections and hashing thread; by default the install's own, closed when it ends. */
  resources?: Resources | undefined;
}

export interface InstallRecord {
  type: PackageType;
  name: string;
  file: string;
  folder: string;
  /** "up-to-date": the marker matched; "from-cache": the cached tarball matched; "fetched". */
  action: 'up-to-date' | 'from-cache' | 'fetched';
  md5: string;
  repository: string;
  /** Bytes moved over the network for this package. */
  bytes: number;
  seconds: number;
  /** Why each repository before the one that served could not: unreachable, refused, corrupt. */
  passedOver: string[];
}

/** Where a package is installed: installDir/tests/NAME, deps/NAME, profilers/NAME, or client/. */
export function installFolder(installDir: string, type: PackageType, name: string): string {
  return type === 'client' ? path.join(installDir, 'client') : path.join(installDir, TYPE_FOLDERS[type], name);
}

async function readMarker(folder: string): Promise<string | undefined> {
  try {
    return (await readFile(path.join(folder, MARKER_FILE), 'utf8')).trim();
  } catch {
    return undefined;
  }
}

/**
 * Removes the unfinished new folders of every dead installer beside `folder`, whatever
 * package they were for (they are tagged with host and pid, so a live installer's is never
 * touched), and puts back what a killed installer of this package left between its two
 * renames (the old folder moved aside, the new one not yet in place).
 */
async function recover(folder: string): Promise<void> {
  const parent = path.dirname(folder);
  const base = path.basename(folder);
  let names: string[];
  try {
    names = await readdir(parent);
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') return;
    throw error;
  }
  await removeDeadTemps(parent);
  const present = names.includes(base);
  for (const name of names) {
    if (name.startsWith(`.${base}.old.`)) {
      if (!present) await rename(path.join(parent, name), folder);
      else await rm(path.join(parent, name), { recursive: true, force: true });
    } else if (name.startsWith(`.${base}.new.`)) {
      // Untagged new folders come from installers older than the host and pid tags; this
      // package's lock is held, so no live installer writes one.
      await rm(path.join(parent, name), { recursive: true, force: true });
    }
  }
}

/** Extracts the tarball beside `folder`, marks it, then swaps it in with two renames. */
async function swapIn(tarball: string, folder: string, md5: string): Promise<void> {
  const parent = path.dirname(folder);
  const base = path.basename(folder);
  // Tagged with host and pid: the next install of any package here removes it once this
  // process is gone (killed mid-extraction), and never while it lives.
  const fresh = tempPathFor(folder);
  const old = path.join(parent, `.${base}.old.${randomBytes(4).toString('hex')}`);
  await mkdir(parent, { recursive: true });
  await extractTarball(tarball, fresh);
  try {
    await writeFile(path.join(fresh, MARKER_FILE), `${md5}\n`, { mode: 0o644 });
    await fsyncPath(path.join(fresh, MARKER_FILE));
    let hadOld = true;
    try {
      await rename(folder, old);
    } catch (error) {
      if (errnoCode(error) !== 'ENOENT') throw error;
      hadOld = false;
    }
    await rename(fresh, folder);
    await fsyncPath(parent);
    if (hadOld) await rm(old, { recursive: true, force: true });
  } catch (error) {
    await rm(fresh, { recursive: true, force: true });
    throw error;
  }
}

/** The file names a package may have in a repository, Autotest's .tar.bz2 first. */
function candidateFiles(type: PackageType, name: string): string[] {
  return COMPRESSIONS.map((compression) => packageFileName(type, name, compression));
}

/**
 * Installs packages on this machine: each is looked up in the repositories, skipped when its
 * folder's marker matches the index, else fetched into the cache (skipped when the cached
 * tarball matches) and swapped in whole. A per-package lock across processes makes
 * concurrent installs of one package do the work once. Offline, only what is installed or
 * cached is used. Then the cache is trimmed to client_cache_size.
 */
export async function installPackages(type: PackageType, names: string[], options: InstallOptions): Promise<InstallRecord[]> {
  for (const name of names) checkName(name);
  const cacheDir = options.cacheDir ?? path.join(options.installDir, 'packages');
  await mkdir(path.join(cacheDir, '.locks'), { recursive: true });
  const limit = pLimit(options.jobs ?? 4);
  let records: InstallRecord[];
  if (options.offline === true) records = await installOffline(type, names, { ...options, cacheDir });
  else {
    const fetcher = await PackageFetcher.create(options.locations, options.settings, {
      stateDir: cacheDir,
      onWarning: options.onWarning,
      resources: options.resources,
    });
    try {
      records = await Promise.all(names.map((name) => limit(() => installOne(fetcher, { ...options, cacheDir }, type, name))));
    } finally {
      await fetcher.close();
    }
  }
  if (options.cacheSizeBytes !== undefined && options.cacheSizeBytes > 0) await trimCache(cacheDir, options.cacheSizeBytes);
  return records;
}

function lockedPackage<T>(cacheDir: string, type: PackageType, name: string, waitSeconds: number, work: () => Promise<T>): Promise<T> {
  return withHeldLock(spawnLocalFlock(packageLockPath(cacheDir, type, name), waitSeconds), `package cache ${cacheDir}`, work);
}

async function installOne(fetcher: PackageFetcher, options: InstallOptions & { cacheDir: string }, type: PackageType, name: string): Promise<InstallRecord> {
  const { settings, installDir, cacheDir } = options;
  const started = performance.now();
  const folder = installFolder(installDir, type, name);
  const { file, entry, repository, passedOver } = await fetcher.lookup(candidateFiles(type, name));
  // One lock per installed folder, whatever file name a repository gives the package; a
  // waiter may wait as long as a download may take.
  const waitSeconds = Math.ceil((2 * settings.timeoutMs) / 1000) + 60;
  return lockedPackage(cacheDir, type, name, waitSeconds, async () => {
    const record = (action: InstallRecord['action'], source: string, bytes: number, used: IndexEntry, passed = passedOver): InstallRecord => ({
      type,
      name,
      file: used.file,
      folder,
      action,
      md5: used.md5,
      repository: source,
      bytes,
      seconds: (performance.now() - started) / 1000,
      passedOver: passed,
    });
    await recover(folder);
    const cached = path.join(cacheDir, file);
    if ((await readMarker(folder)) === entry.md5) {
      await storeEntry(cacheDir, type, name, entry);
      await touchCached(cached);
      return record('up-to-date', repository, 0, entry);
    }
    if (await cachedMatches(cached, entry)) {
      await swapIn(cached, folder, entry.md5);
      await storeEntry(cacheDir, type, name, entry);
      await touchCached(cached);
      return record('from-cache', cacheDir, 0, entry);
    }
    // The marker names what was really installed: the entry of the repository that served
    // the bytes, which may hold another version than the first one looked at.
    const fetched = await fetcher.fetch(file, cached, options.onProgress);
    await swapIn(cached, folder, fetched.entry.md5);
    await storeEntry(cacheDir, type, name, fetched.entry);
    return record('fetched', fetched.repository, fetched.bytes, fetched.entry, [...new Set([...passedOver, ...fetched.passedOver])]);
  });
}

/** What an offline install found for one package, or why it has nothing. */
type OfflineOutcome = { record: InstallRecord } | { missing: string };

/**
 * Offline: a package is usable when its folder's marker matches the entry stored at its last
 * install (or there is no stored entry, only the marker), or when its cached tarball matches
 * that entry. Every package is looked at before failing, so the error names all that are missing.
 */
async function installOffline(type: PackageType, names: string[], options: InstallOptions & { cacheDir: string }): Promise<InstallRecord[]> {
  const { cacheDir, installDir } = options;
  const distrust = await offlineDistrust(options);
  const outcomes = await Promise.all(
    names.map((name) =>
      lockedPackage(cacheDir, type, name, Math.ceil((2 * options.settings.timeoutMs) / 1000) + 60, async (): Promise<OfflineOutcome> => {
        const started = performance.now();
        const folder = installFolder(installDir, type, name);
        await recover(folder);
        const entry = await readStoredEntry(cacheDir, type, name);
        const marker = await readMarker(folder);
        const record = (action: InstallRecord['action'], file: string, md5: string, repository: string): OfflineOutcome => ({
          record: { type, name, file, folder, action, md5, repository, bytes: 0, seconds: (performance.now() - started) / 1000, passedOver: [] },
        });
        // With signatures required, the entry itself must still be believed, as it would be online.
        const refused = distrust && (entry ? distrust(entry) : 'installed, but not from a signed index (no entry stored with it)');
        if (refused !== undefined) return { missing: `${type} ${name}: ${refused}` };
        if (marker !== undefined && (entry === undefined || entry.md5 === marker)) {
          if (entry) await touchCached(path.join(cacheDir, entry.file));
          return record('up-to-date', entry?.file ?? packageFileName(type, name, 'bzip2'), marker, folder);
        }
        if (!entry) return { missing: `${type} ${name}: neither installed nor cached` };
        const cached = path.join(cacheDir, entry.file);
        if (!(await cachedMatches(cached, entry))) return { missing: `${type} ${name}: ${entry.file} is not in the package cache, or fails its checksum` };
        await swapIn(cached, folder, entry.md5);
        await touchCached(cached);
        return record('from-cache', entry.file, entry.md5, cacheDir);
      }),
    ),
  );
  const missing = outcomes.flatMap((outcome) => ('missing' in outcome ? [outcome.missing] : []));
  if (missing.length > 0) {
    throw new AutotestError(
      'ERR_OFFLINE_MISSING',
      `offline, ${missing.length.toString()} package(s) cannot be installed from ${installDir} or the package cache ${cacheDir}:\n${missing.map((m) => `  - ${m}`).join('\n')}`,
      {
        hint: 'install them once with a connection (without --offline), then run offline',
      },
    );
  }
  return outcomes.flatMap((outcome) => ('record' in outcome ? [outcome.record] : []));
}

/**
 * Offline with require_signature: the index each repository of fetch_location last verified
 * (kept in the package cache) is judged again now, with today's trusted keys, its expiry and
 * the newest serial seen, as online. Returns why an entry is not believed (undefined: it is),
 * or nothing to check without required signatures.
 */
async function offlineDistrust(options: InstallOptions & { cacheDir: string }): Promise<((entry: IndexEntry) => string | undefined) | undefined> {
  const trust = await openIndexTrust(options.settings.trust, options.cacheDir);
  if (!trust?.required) return undefined;
  const believed: RepositoryIndex[] = [];
  const refusals: string[] = [];
  for (const location of flattenFetchLocations(options.locations)) {
    const name = describeLocation(location);
    const pair = await readKeptIndex(options.cacheDir, name);
    if (!pair) {
      refusals.push(`${name}: no signed index verified from it yet`);
      continue;
    }
    try {
      believed.push(verifyKeptIndex(name, pair, trust).index);
    } catch (error) {
      if (!isAutotestError(error, 'ERR_SIGNATURE') && !isAutotestError(error, 'ERR_BAD_INDEX')) throw error;
      refusals.push(error.message);
    }
  }
  return (entry) => {
    const listed = believed.some((index) => {
      const signed = index.get(entry.file);
      return signed !== undefined && signed.md5 === entry.md5 && signed.sha256 === entry.sha256;
    });
    return listed ? undefined : `${entry.file} is in no signed index still believed${refusals.length > 0 ? ` (${refusals.join('; ')})` : ''}`;
  };
}

async function cachedMatches(cached: string, entry: IndexEntry): Promise<boolean> {
  try {
    return matchesEntry(entry, await digestFile(cached));
  } catch {
    return false;
  }
}

/**
 * Installs a package from a tarball that came another way than a repository (autoserv's
 * channel), already verified by the caller against the checksum it was sent with: same lock,
 * recovery, swap and marker as installPackages.
 */
export async function installFromTarball(
  type: PackageType,
  name: string,
  tarball: string,
  md5: string,
  options: Pick<InstallOptions, 'installDir' | 'cacheDir'>,
): Promise<string> {
  checkName(name);
  const cacheDir = options.cacheDir ?? path.join(options.installDir, 'packages');
  await mkdir(path.join(cacheDir, '.locks'), { recursive: true });
  const folder = installFolder(options.installDir, type, name);
  await lockedPackage(cacheDir, type, name, 300, async () => {
    await recover(folder);
    await swapIn(tarball, folder, md5);
  });
  return folder;
}
