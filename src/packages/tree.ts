import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readdirSync, readlinkSync, type Dirent, type Stats } from 'node:fs';
import { lstat, readFile } from 'node:fs/promises';
import path from 'node:path';
import picomatch from 'picomatch';
import { AutotestError, errnoCode } from '../errors.js';

/** One entry of a package's tree, in the form it takes inside the tarball. */
export interface TreeEntry {
  /** Relative POSIX path inside the package, without "./" or a trailing slash. */
  path: string;
  absPath: string;
  kind: 'file' | 'dir' | 'symlink';
  /** Normalised mode: 0755 for folders and executables, 0644 for other files. */
  mode: number;
  size: number;
  linkTarget: string | undefined;
  /**
   * With `size`, what changes whenever a file may have changed: device, inode, mtime and
   * ctime (ms, to a fraction of a µs). 0 for folders and symlinks, which their names and
   * targets describe whole: a folder's own times only say that its names changed.
   */
  dev: number;
  ino: number;
  mtimeMs: number;
  ctimeMs: number;
}

/** Decides whether a relative path is left out; `isDir` for folders (their contents go too). */
export type ExcludeRule = (relPath: string, isDir: boolean) => boolean;

export const PACK_EXCLUDE_FILE = '.pack_exclude';

/**
 * Reads a `.pack_exclude`: one glob per line, `#` comments. Like tar's --exclude-from, a
 * pattern without "/" matches a name at any depth; one with "/" matches the path from the
 * package folder. A match on a folder leaves out everything under it.
 */
export async function readPackExclude(folder: string): Promise<ExcludeRule | undefined> {
  const file = path.join(folder, PACK_EXCLUDE_FILE);
  // Most folders have none, and a failed open costs an error object with its stack trace.
  if (!existsSync(file)) return undefined;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') return undefined;
    throw error;
  }
  const patterns = text
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'));
  if (patterns.length === 0) return undefined;
  const matchers = patterns.map((pattern) => {
    const anchored = pattern.replace(/^\.?\/+/, '').replace(/\/+$/, '');
    return picomatch(anchored, { dot: true, basename: !anchored.includes('/') });
  });
  return (relPath) => matchers.some((matches) => matches(relPath));
}

export function combineRules(...rules: (ExcludeRule | undefined)[]): ExcludeRule {
  const present = rules.filter((rule): rule is ExcludeRule => rule !== undefined);
  if (present.length === 0) return () => false;
  if (present.length === 1) return present[0] as ExcludeRule;
  return (relPath, isDir) => present.some((rule) => rule(relPath, isDir));
}

const ASCII = /^[\x00-\x7f]*$/;

/** Folder entries in byte order of their UTF-8 names; for ASCII names (nearly all) that is code-unit order. */
export function sortDirents(dirents: Dirent[]): Dirent[] {
  if (dirents.every((dirent) => ASCII.test(dirent.name))) return dirents.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return dirents.sort((a, b) => Buffer.compare(Buffer.from(a.name), Buffer.from(b.name)));
}

/**
 * Whether a symlink at `relPath` pointing to `target` stays inside the package. A textual
 * check is not enough: with `s -> .`, the target `s/..` looks inside but leads out. So
 * `..` may only lead the target, climbing the link's own folders (real folders: nothing is
 * ever written through a symlink), never follow a name that could itself be a link.
 */
export function linkStaysInside(relPath: string, target: string): boolean {
  if (target === '' || target.includes('\0') || path.posix.isAbsolute(target)) return false;
  const parts = target.split('/').filter((part) => part !== '' && part !== '.');
  let ups = 0;
  while (parts[ups] === '..') ups += 1;
  if (parts.slice(ups).includes('..')) return false;
  const depth = relPath.split('/').filter((part) => part !== '').length - 1;
  return ups <= depth;
}

/** The entry of one regular file packed under `rel`, wherever it lives. */
export async function fileEntry(abs: string, rel: string): Promise<TreeEntry> {
  const st = await lstat(abs);
  if (!st.isFile()) throw new AutotestError('ERR_PACK', `${abs}: not a regular file`);
  return regularFileEntry(abs, rel, st);
}

/** A regular file's entry from its stat: executable bits give 0755, the rest 0644. */
function regularFileEntry(abs: string, rel: string, st: Stats): TreeEntry {
  return {
    path: rel,
    absPath: abs,
    kind: 'file',
    mode: (st.mode & 0o111) !== 0 ? 0o755 : 0o644,
    size: st.size,
    linkTarget: undefined,
    dev: st.dev,
    ino: st.ino,
    mtimeMs: st.mtimeMs,
    ctimeMs: st.ctimeMs,
  };
}

/**
 * Lists a package folder in tarball order (byte order of paths, folders before their
 * contents), leaving out what `exclude` names. Only files, folders and symlinks that stay
 * inside the package can be packed; anything else is an error naming the entry.
 *
 * The walk is the whole cost of an unchanged re-run, so it makes the syscalls `find` makes
 * and no more: one readdir per folder (which gives each entry's type) and one lstat per
 * regular file (its size and times), none for folders and symlinks. It is synchronous: a
 * thread-pool round trip per lstat costs more than the lstat itself. Number stats, not
 * bigint ones: they cost no BigInt and Date objects per file for the garbage collector.
 */
export function walkTree(root: string, exclude: ExcludeRule): Promise<TreeEntry[]> {
  const entries: TreeEntry[] = [];
  // path.join on every entry costs as much as its lstat; rel never holds '.', '..' or '//'.
  const base = root.endsWith('/') ? root : `${root}/`;
  const visit = (relDir: string): void => {
    const dirents = sortDirents(readdirSync(relDir === '' ? root : `${base}${relDir}`, { withFileTypes: true }));
    for (const dirent of dirents) {
      const rel = relDir === '' ? dirent.name : `${relDir}/${dirent.name}`;
      const abs = `${base}${rel}`;
      const isDir = dirent.isDirectory();
      if (exclude(rel, isDir)) continue;
      if (isDir) {
        entries.push({ path: rel, absPath: abs, kind: 'dir', mode: 0o755, size: 0, linkTarget: undefined, dev: 0, ino: 0, mtimeMs: 0, ctimeMs: 0 });
        visit(rel);
      } else if (dirent.isFile()) {
        const st = lstatSync(abs);
        // Replaced by something else since the readdir: the next walk sees what it is now.
        if (!st.isFile())
          throw new AutotestError('ERR_PACK', `${abs}: changed while being listed`, { hint: 'run the packager again once nothing writes to the client tree' });
        entries.push(regularFileEntry(abs, rel, st));
      } else if (dirent.isSymbolicLink()) {
        const target = readlinkSync(abs);
        if (!linkStaysInside(rel, target)) {
          throw new AutotestError('ERR_PACK', `${abs}: symlink to "${target}" points outside its package`, {
            hint: 'packages are installed on other machines: replace the link by the file, or point it inside the package folder',
          });
        }
        entries.push({ path: rel, absPath: abs, kind: 'symlink', mode: 0o777, size: 0, linkTarget: target, dev: 0, ino: 0, mtimeMs: 0, ctimeMs: 0 });
      } else {
        throw new AutotestError('ERR_PACK', `${abs}: only files, folders and symlinks can be packed (this is a socket, FIFO or device)`, {
          hint: `remove it or list it in ${PACK_EXCLUDE_FILE}`,
        });
      }
    }
  };
  // A throw inside the executor becomes the rejection.
  return new Promise((resolve) => {
    visit('');
    resolve(entries);
  });
}

const KIND_CODE = { file: 0, dir: 1, symlink: 2 } as const;

/**
 * A digest of what the tree looks like on disk, without reading file contents: when it is
 * unchanged since the last pack, the package is unchanged too. The paths go in as one text
 * and the numbers as one array of doubles (an inode beyond 2^53 loses its last bits, which
 * the times and size still cover): three hash updates per package, not one per entry.
 */
export function treeFingerprint(entries: TreeEntry[], salt: string): string {
  const paths = new Array<string>(entries.length);
  const numbers = new Float64Array(entries.length * 7);
  let i = 0;
  let k = 0;
  for (const entry of entries) {
    // A path never holds NUL: it separates a symlink's target.
    paths[k++] = entry.linkTarget === undefined ? entry.path : `${entry.path}\0${entry.linkTarget}`;
    numbers[i++] = KIND_CODE[entry.kind];
    numbers[i++] = entry.mode;
    numbers[i++] = entry.size;
    numbers[i++] = entry.dev;
    numbers[i++] = entry.ino;
    numbers[i++] = entry.mtimeMs;
    numbers[i++] = entry.ctimeMs;
  }
  return createHash('sha256').update(`${salt}\n`).update(paths.join('\n')).update(new Uint8Array(numbers.buffer)).digest('hex');
}
