import type { Resources } from '../resources.js';
import type { FetchTls, Location } from '../config/index.js';
import { errnoCode, isAutotestError } from '../errors.js';
import { isTempName } from '../fs/atomic.js';
import {
  CHECKSUM_FILE,
  MANIFEST_FILE,
  formatChecksumFile,
  formatManifest,
  matchesEntry,
  SIGNATURE_FILE,
  parseChecksumFile,
  readIndexFiles,
  type Digests,
  type ManifestHeader,
  type RepositoryIndex,
} from '../packages/index.js';
import { nextManifestHeader, signManifest, type IndexSigning } from '../signing/index.js';
import { LOCK_NAME } from './lock.js';
import type { IndexChange, StagedFile, UploadTarget } from './types.js';

export interface FileInfo {
  size: number;
  mtimeMs: number;
}

/**
 * The few primitives a scheme provides (a local folder, a folder on an SSH host); the
 * index rules that make a repository safe are written once, on top of them, in targetFromStore.
 */
export interface RepositoryStore {
  location: Location;
  name: string;
  prepare(options: { minimumFreeBytes: number; neededBytes: number }): Promise<{ created: boolean }>;
  /** A file's text, or undefined when it does not exist. */
  readText(file: string): Promise<string | undefined>;
  /** Replaces a file atomically (temp file, sync, rename), mode 0644. */
  writeText(file: string, text: string): Promise<void>;
  /** Size of a regular file, or undefined when there is none. */
  size(file: string): Promise<number | undefined>;
  /** Every regular file of the folder with its size and modification time. */
  list(): Promise<Map<string, FileInfo>>;
  /**
   * Puts `source`'s bytes in under a temp name, synced. A local folder on the same file system
   * hard-links it: the caller never writes to `source` after staging it (removing it is fine).
   */
  stage(file: string, source: string): Promise<StagedFile>;
  /** Renames staged files to their names and makes the renames durable. */
  moveIntoPlace(staged: StagedFile[]): Promise<void>;
  remove(files: string[]): Promise<void>;
  discard(staged: StagedFile[]): Promise<void>;
  digest(file: string): Promise<Digests>;
  cleanTemps(): Promise<string[]>;
  withLock<T>(work: (assertHeld: () => void) => Promise<T>): Promise<T>;
}

/** Files of a repository folder that are not packages. */
export function isHousekeepingName(name: string): boolean {
  return (
    name === CHECKSUM_FILE || name === MANIFEST_FILE || name === SIGNATURE_FILE || name === LOCK_NAME || isTempName(name) || name.startsWith('.write-probe')
  );
}

/** Reads a store's index (packages.checksum and packages.json); empty when it has none. */
export async function readStoreIndex(store: RepositoryStore): Promise<RepositoryIndex> {
  return (await readStoreIndexAndHeader(store)).index;
}

/** The index with the manifest's header (its serial), which the next write goes on from. */
async function readStoreIndexAndHeader(store: RepositoryStore): Promise<{ index: RepositoryIndex; header: ManifestHeader | undefined }> {
  const checksumText = await store.readText(CHECKSUM_FILE);
  const manifestText = await store.readText(MANIFEST_FILE);
  const where = (file: string): string => `${store.name}/${file}`;
  const checksums = checksumText === undefined ? undefined : parseChecksumFile(checksumText, where(CHECKSUM_FILE));
  const manifest = readIndexFiles(checksums, manifestText, where);
  const merged = manifest.index;
  if (checksums) {
    // A manifest-only entry is kept only while its file is there with its size: an older
    // packager that rewrites packages.checksum alone may have removed it since.
    for (const entry of [...merged.values()]) {
      if (checksums.has(entry.file)) continue;
      const size = await store.size(entry.file);
      if (size === undefined || (entry.size !== undefined && size !== entry.size)) merged.delete(entry.file);
    }
  }
  return { index: merged, header: manifest.header };
}

/**
 * The manifest goes first: a reader of packages.checksum alone never sees an entry the
 * manifest lacks the file for. Its signature follows it (readers read the signature first,
 * see readVerifiedIndex), or, unsigned, a stale signature is removed. Returns the header written, which the next write goes on from.
 */
async function writeStoreIndex(
  store: RepositoryStore,
  written: { index: RepositoryIndex; header: ManifestHeader | undefined },
  assertHeld: () => void,
  signing: IndexSigning | undefined,
): Promise<ManifestHeader> {
  const header = nextManifestHeader(written.header, signing?.validDays);
  const manifest = formatManifest(written.index, header);
  const signature = signing ? await signManifest(manifest, signing.key) : undefined;
  assertHeld();
  await store.writeText(MANIFEST_FILE, manifest);
  assertHeld();
  // Without signing_key, a signature of an earlier manifest left beside this one would make
  // every trusting client take the repository for forged: without it, they see it unsigned.
  if (signature === undefined) await store.remove([SIGNATURE_FILE]);
  else await store.writeText(SIGNATURE_FILE, signature);
  assertHeld();
  await store.writeText(CHECKSUM_FILE, formatChecksumFile(written.index));
  return header;
}

export interface TargetOptions {
  /** signing_key: every manifest written is signed (packages.json.sig). */
  signing?: IndexSigning | undefined;
  /** Where ssh and s3 targets keep their connections: those of the command or server (createUploadTarget requires it). */
  resources?: Resources;
  /** fetch_ca_file and the client certificate: an https S3 endpoint is reached with them, as for fetching. */
  tls?: FetchTls | undefined;
}

/** An upload target that keeps the index rules on whatever store it is given. */
export function targetFromStore(store: RepositoryStore, options: TargetOptions = {}): UploadTarget {
  const { signing } = options;
  return {
    location: store.location,
    name: store.name,
    prepare: (options) => store.prepare(options),
    readIndex: () => readStoreIndex(store),
    fileSize: (file) => store.size(file),
    stage: (file, source) => store.stage(file, source),
    discard: (staged) => store.discard(staged),
    listFiles: async () => [...(await store.list()).keys()],
    digestFile: (file) => store.digest(file),
    cleanTemps: () => store.cleanTemps(),

    async commit(change: IndexChange) {
      await store.withLock(async (assertHeld) => {
        const read = await readStoreIndexAndHeader(store);
        const { index } = read;
        // An entry whose file is about to be replaced leaves the index first, so that at
        // every moment each entry names a file with exactly its checksum.
        const replaced = change.add.filter(({ entry }) => index.has(entry.file));
        const removed = change.remove.filter((file) => index.has(file));
        if (replaced.length > 0 || removed.length > 0) {
          for (const { entry } of replaced) index.delete(entry.file);
          for (const file of removed) index.delete(file);
          read.header = await writeStoreIndex(store, read, assertHeld, signing);
        }
        if (change.add.length > 0) {
          assertHeld();
          await store.moveIntoPlace(change.add.map(({ staged }) => staged));
        }
        if (change.remove.length > 0) await store.remove(change.remove);
        for (const { entry } of change.add) index.set(entry.file, entry);
        // A refresh was decided before the lock: it applies only if the entry still
        // describes the same bytes, i.e. no other writer replaced the file meanwhile.
        for (const entry of change.refresh) {
          if (index.get(entry.file)?.md5 === entry.md5) index.set(entry.file, entry);
        }
        await writeStoreIndex(store, read, assertHeld, signing);
      });
    },

    async purge(files) {
      return store.withLock(async (assertHeld) => {
        const read = await readStoreIndexAndHeader(store);
        const { index } = read;
        // Checked again under the lock: a verify that raced an upload may have seen a
        // half-published package that is complete and right by now.
        const bad: string[] = [];
        for (const file of files) {
          const entry = index.get(file);
          // Only a missing file counts as missing: a dropped connection or an I/O error stops
          // the repair instead of deleting a package that may be fine.
          const digests = await store.digest(file).catch((error: unknown) => {
            if (errnoCode(error) === 'ENOENT' || isAutotestError(error, 'ERR_NOT_FOUND')) return undefined;
            throw error;
          });
          if (entry && digests && matchesEntry(entry, digests)) continue;
          bad.push(file);
        }
        for (const file of bad) index.delete(file);
        await writeStoreIndex(store, read, assertHeld, signing);
        await store.remove(bad);
        return bad;
      });
    },

    async readSignedPair() {
      const signature = await store.readText(SIGNATURE_FILE);
      return { signature, manifest: await store.readText(MANIFEST_FILE) };
    },

    async sign() {
      return store.withLock(async (assertHeld) => {
        const header = await writeStoreIndex(store, await readStoreIndexAndHeader(store), assertHeld, signing);
        return header.serial ?? 0;
      });
    },

    async expire(olderThanMs) {
      return store.withLock(async (assertHeld) => {
        const old = [...(await store.list())]
          .filter(([name, info]) => !isHousekeepingName(name) && info.mtimeMs < olderThanMs)
          .map(([name]) => name)
          .sort();
        if (old.length === 0) return [];
        // Out of the index first, then off the disk: no entry ever names a missing file.
        const read = await readStoreIndexAndHeader(store);
        for (const file of old) read.index.delete(file);
        await writeStoreIndex(store, read, assertHeld, signing);
        await store.remove(old);
        return old;
      });
    },
  };
}
