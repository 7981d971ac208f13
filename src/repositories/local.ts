import { copyFile, chmod, mkdir, open, readFile, readdir, rename, rm, stat, statfs } from 'node:fs/promises';
import path from 'node:path';
import { AutotestError, describeError, errnoCode } from '../errors.js';
import type { Location } from '../config/index.js';
import { fsyncPath, removeDeadTemps, tempPathFor, writeFileAtomic } from '../fs/atomic.js';
import {
  CHECKSUM_FILE,
  MANIFEST_FILE,
  digestFile,
  matchesEntry,
  formatChecksumFile,
  formatManifest,
  mergeIndex,
  parseChecksumFile,
  parseManifest,
  type RepositoryIndex,
} from '../packages/index.js';
import { withIndexLock } from './lock.js';
import type { IndexChange, StagedFile, UploadTarget } from './types.js';

async function readOptional(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') return undefined;
    throw error;
  }
}

/** Reads a folder's index (packages.checksum and packages.json); empty when it has none. */
export async function readLocalIndex(dir: string): Promise<RepositoryIndex> {
  const checksumText = await readOptional(path.join(dir, CHECKSUM_FILE));
  const manifestText = await readOptional(path.join(dir, MANIFEST_FILE));
  const checksums = checksumText === undefined ? undefined : parseChecksumFile(checksumText, path.join(dir, CHECKSUM_FILE));
  const merged = mergeIndex(checksums, manifestText === undefined ? undefined : parseManifest(manifestText, path.join(dir, MANIFEST_FILE)));
  if (checksums) {
    // A manifest-only entry is kept only while its file is there with its size: an older
    // packager that rewrites packages.checksum alone may have removed it since.
    for (const entry of [...merged.values()]) {
      if (checksums.has(entry.file)) continue;
      const st = await stat(path.join(dir, entry.file)).catch(() => undefined);
      if (!st?.isFile() || (entry.size !== undefined && st.size !== entry.size)) merged.delete(entry.file);
    }
  }
  return merged;
}

/** The manifest goes first: a reader of packages.checksum alone never sees an entry the manifest lacks the file for. */
async function writeLocalIndex(dir: string, index: RepositoryIndex): Promise<void> {
  await writeFileAtomic(path.join(dir, MANIFEST_FILE), formatManifest(index));
  await writeFileAtomic(path.join(dir, CHECKSUM_FILE), formatChecksumFile(index));
}

function refused(dir: string, why: string, hint: string, cause?: unknown): AutotestError {
  return new AutotestError('ERR_LOCATION_REFUSED', `upload location ${dir}: ${why}`, { hint, cause });
}

const GB = 1e9;

export function createLocalTarget(location: Extract<Location, { kind: 'local' }>): UploadTarget {
  const dir = location.path;
  const inDir = (file: string): string => path.join(dir, file);

  return {
    location,
    name: dir,

    async prepare({ minimumFreeBytes, neededBytes }) {
      let created = false;
      try {
        const st = await stat(dir);
        if (!st.isDirectory()) throw refused(dir, 'exists but is not a folder', 'point upload_location at a folder');
      } catch (error) {
        if (errnoCode(error) !== 'ENOENT') {
          if (error instanceof AutotestError) throw error;
          throw refused(dir, `cannot be read (${errnoCode(error) ?? describeError(error)})`, 'check the path and its permissions', error);
        }
        try {
          await mkdir(dir, { recursive: true });
          created = true;
        } catch (mkdirError) {
          throw refused(dir, `does not exist and cannot be created (${errnoCode(mkdirError) ?? describeError(mkdirError)})`,
            'create the folder or fix upload_location', mkdirError);
        }
      }
      // Root ignores permission bits, so the only true test is to create a file.
      const probe = tempPathFor(inDir('.write-probe'));
      try {
        const handle = await open(probe, 'wx', 0o644);
        await handle.close();
      } catch (error) {
        throw refused(dir, `is not writable (${errnoCode(error) ?? describeError(error)})`,
          'fix its permissions or mount, or remove it from upload_location', error);
      } finally {
        await rm(probe, { force: true });
      }
      const fs = await statfs(dir);
      const free = fs.bavail * fs.bsize;
      const wanted = Math.max(minimumFreeBytes, neededBytes);
      if (free < wanted) {
        throw new AutotestError('ERR_NO_SPACE',
          `upload location ${dir}: ${(free / GB).toFixed(3)} GB free, ${(wanted / GB).toFixed(3)} GB needed (minimum_free_space ${(minimumFreeBytes / GB).toString()} GB)`,
          { hint: 'free some space there, or lower minimum_free_space in [PACKAGES]' });
      }
      return { created };
    },

    readIndex: () => readLocalIndex(dir),

    async fileSize(file) {
      try {
        const st = await stat(inDir(file));
        return st.isFile() ? st.size : undefined;
      } catch (error) {
        if (errnoCode(error) === 'ENOENT') return undefined;
        throw error;
      }
    },

    async stage(file, source) {
      const tempPath = tempPathFor(inDir(file));
      try {
        await copyFile(source, tempPath);
        await chmod(tempPath, 0o644);
        await fsyncPath(tempPath);
      } catch (error) {
        await rm(tempPath, { force: true });
        if (errnoCode(error) === 'ENOSPC') {
          throw new AutotestError('ERR_NO_SPACE', `upload location ${dir}: disk full while copying ${file}`, {
            hint: 'free some space there; nothing was published', cause: error,
          });
        }
        throw error;
      }
      return { file, tempPath };
    },

    async commit(change: IndexChange) {
      await withIndexLock(dir, dir, async (assertHeld) => {
        const index = await readLocalIndex(dir);
        // An entry whose file is about to be replaced leaves the index first, so that at
        // every moment each entry names a file with exactly its checksum.
        const replaced = change.add.filter(({ entry }) => index.has(entry.file));
        const removed = change.remove.filter((file) => index.has(file));
        if (replaced.length > 0 || removed.length > 0) {
          for (const { entry } of replaced) index.delete(entry.file);
          for (const file of removed) index.delete(file);
          assertHeld();
          await writeLocalIndex(dir, index);
        }
        for (const { staged } of change.add) {
          assertHeld();
          await rename(staged.tempPath, inDir(staged.file));
        }
        if (change.add.length > 0) await fsyncPath(dir);
        for (const file of change.remove) await rm(inDir(file), { force: true });
        for (const { entry } of change.add) index.set(entry.file, entry);
        // A refresh was decided before the lock: it applies only if the entry still
        // describes the same bytes, i.e. no other writer replaced the file meanwhile.
        for (const entry of change.refresh) {
          if (index.get(entry.file)?.md5 === entry.md5) index.set(entry.file, entry);
        }
        assertHeld();
        await writeLocalIndex(dir, index);
      });
    },

    async discard(staged: StagedFile[]) {
      await Promise.all(staged.map((s) => rm(s.tempPath, { force: true })));
    },

    listFiles: () => readdir(dir),

    digestFile: (file) => digestFile(inDir(file)),

    cleanTemps: () => removeDeadTemps(dir),

    async purge(files) {
      return withIndexLock(dir, dir, async (assertHeld) => {
        const index = await readLocalIndex(dir);
        // Checked again under the lock: a verify that raced an upload may have seen a
        // half-published package that is complete and right by now.
        const bad: string[] = [];
        for (const file of files) {
          const entry = index.get(file);
          const digests = await digestFile(inDir(file)).catch(() => undefined);
          if (entry && digests && matchesEntry(entry, digests)) continue;
          bad.push(file);
        }
        for (const file of bad) index.delete(file);
        assertHeld();
        await writeLocalIndex(dir, index);
        for (const file of bad) await rm(inDir(file), { force: true });
        return bad;
      });
    },
  };
}
