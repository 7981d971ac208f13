import { copyFile, chmod, link, mkdir, open, readFile, readdir, rename, rm, stat, statfs } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { AutotestError, describeError, errnoCode } from '../../errors.js';
import type { Location } from '../../config/index.js';
import { fsyncPath, removeDeadTemps, tempPathFor, writeFileAtomic } from '../../fs/atomic.js';
import { digestFile, type RepositoryIndex } from '../../packages/index.js';
import { withIndexLock } from '../lock.js';
import { readStoreIndex, targetFromStore, type FileInfo, type RepositoryStore, type TargetOptions } from '../store.js';
import type { StagedFile, UploadTarget } from '../types.js';

async function readOptional(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') return undefined;
    throw error;
  }
}

/** Reads a folder's index (packages.checksum and packages.json); empty when it has none. */
export function readLocalIndex(dir: string): Promise<RepositoryIndex> {
  return readStoreIndex(createLocalStore({ kind: 'local', path: dir, text: dir }));
}

function refused(dir: string, why: string, hint: string, cause?: unknown): AutotestError {
  return new AutotestError('ERR_LOCATION_REFUSED', `upload location ${dir}: ${why}`, { hint, cause });
}

const GB = 1e9;

/** The mode bit that gives new files in a folder the folder's group. */
const SETGID = 0o2000;

/** SELinux is on (its file system is mounted): files must take their folder's label, so they are copied. */
const SELINUX_ENABLED = existsSync('/sys/fs/selinux/enforce');

/** What `link` answers where a copy still works: another file system, or one without hard links for us. */
const LINK_REFUSALS = new Set(['EXDEV', 'EPERM', 'EMLINK', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS']);

/**
 * Hard-links `source` at `dest`, sparing the copy of a package staged from the same file
 * system; false where a copy must be made instead. The link is kept only while `source` has
 * no other name than itself and `dest`: two locations on one file system never share a file,
 * so that nothing done to one (an edit in place) can reach the other; nor in a setgid folder
 * whose group the staging file lacks; nor under SELinux. The caller never writes
 * to `source` after staging it (see RepositoryStore.stage).
 */
async function linkUnshared(source: string, dest: string): Promise<boolean> {
  // Under SELinux a link keeps the staging folder's label, which a web server serving the
  // location may be refused; a copy takes the location's.
  if (SELINUX_ENABLED) return false;
  try {
    await link(source, dest);
  } catch (error) {
    if (LINK_REFUSALS.has(errnoCode(error) ?? '')) return false;
    throw error;
  }
  const [linked, folder] = await Promise.all([stat(dest), stat(path.dirname(dest))]);
  // A copy into a setgid folder (a team's shared repository) takes the folder's group; a link keeps the staging file's.
  const sameGroup = (folder.mode & SETGID) === 0 || linked.gid === folder.gid;
  if (linked.nlink <= 2 && sameGroup) return true;
  await rm(dest, { force: true });
  return false;
}

export function createLocalTarget(location: Extract<Location, { kind: 'local' }>, options: TargetOptions = {}): UploadTarget {
  return targetFromStore(createLocalStore(location), options);
}

function createLocalStore(location: Extract<Location, { kind: 'local' }>): RepositoryStore {
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
          throw refused(
            dir,
            `does not exist and cannot be created (${errnoCode(mkdirError) ?? describeError(mkdirError)})`,
            'create the folder or fix upload_location',
            mkdirError,
          );
        }
      }
      // Root ignores permission bits, so the only true test is to create a file.
      const probe = tempPathFor(inDir('.write-probe'));
      try {
        const handle = await open(probe, 'wx', 0o644);
        await handle.close();
      } catch (error) {
        throw refused(
          dir,
          `is not writable (${errnoCode(error) ?? describeError(error)})`,
          'fix its permissions or mount, or remove it from upload_location',
          error,
        );
      } finally {
        await rm(probe, { force: true });
      }
      const fs = await statfs(dir);
      const free = fs.bavail * fs.bsize;
      const wanted = Math.max(minimumFreeBytes, neededBytes);
      if (free < wanted) {
        throw new AutotestError(
          'ERR_NO_SPACE',
          `upload location ${dir}: ${(free / GB).toFixed(3)} GB free, ${(wanted / GB).toFixed(3)} GB needed (minimum_free_space ${(minimumFreeBytes / GB).toString()} GB)`,
          { hint: 'free some space there, or lower minimum_free_space in [PACKAGES]' },
        );
      }
      return { created };
    },

    readText: (file) => readOptional(inDir(file)),

    writeText: (file, text) => writeFileAtomic(inDir(file), text),

    async size(file) {
      try {
        const st = await stat(inDir(file));
        return st.isFile() ? st.size : undefined;
      } catch (error) {
        if (errnoCode(error) === 'ENOENT') return undefined;
        throw error;
      }
    },

    async list() {
      const files = new Map<string, FileInfo>();
      for (const dirent of await readdir(dir, { withFileTypes: true })) {
        if (!dirent.isFile()) continue;
        const st = await stat(inDir(dirent.name)).catch(() => undefined);
        if (st) files.set(dirent.name, { size: st.size, mtimeMs: st.mtimeMs });
      }
      return files;
    },

    async stage(file, source) {
      const tempPath = tempPathFor(inDir(file));
      try {
        if (!(await linkUnshared(source, tempPath))) await copyFile(source, tempPath);
        await chmod(tempPath, 0o644);
        await fsyncPath(tempPath);
      } catch (error) {
        await rm(tempPath, { force: true });
        if (errnoCode(error) === 'ENOSPC') {
          throw new AutotestError('ERR_NO_SPACE', `upload location ${dir}: disk full while copying ${file}`, {
            hint: 'free some space there; nothing was published',
            cause: error,
          });
        }
        throw error;
      }
      return { file, tempPath };
    },

    async moveIntoPlace(staged) {
      for (const s of staged) await rename(s.tempPath, inDir(s.file));
      await fsyncPath(dir);
    },

    async remove(files) {
      for (const file of files) await rm(inDir(file), { force: true });
    },

    async discard(staged: StagedFile[]) {
      await Promise.all(staged.map((s) => rm(s.tempPath, { force: true })));
    },

    digest: (file) => digestFile(inDir(file)),

    cleanTemps: () => removeDeadTemps(dir),

    withLock: (work) => withIndexLock(dir, dir, work),
  };
}
