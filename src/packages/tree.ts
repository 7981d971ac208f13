import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readlinkSync } from 'node:fs';
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
  /** Changes whenever the file may have changed: inode, size, mtime and ctime in ns. */
  statKey: string;
  /** Latest of mtime and ctime, in ms: a change within the same clock tick as a pack is invisible to statKey. */
  changedMs: number;
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
  let text: string;
  try {
    text = await readFile(path.join(folder, PACK_EXCLUDE_FILE), 'utf8');
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') return undefined;
    throw error;
  }
  const patterns = text.split(/\r?\n/).map((line) => line.trim()).filter((line) => line !== '' && !line.startsWith('#'));
  if (patterns.length === 0) return undefined;
  const matchers = patterns.map((pattern) => {
    const anchored = pattern.replace(/^\.?\/+/, '').replace(/\/+$/, '');
    return picomatch(anchored, { dot: true, basename: !anchored.includes('/') });
  });
  return (relPath) => matchers.some((matches) => matches(relPath));
}

export function combineRules(...rules: (ExcludeRule | undefined)[]): ExcludeRule {
  const present = rules.filter((rule): rule is ExcludeRule => rule !== undefined);
  return (relPath, isDir) => present.some((rule) => rule(relPath, isDir));
}

function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

const ASCII = /^[\x00-\x7f]*$/;

/** Names in byte order of their UTF-8 form; for ASCII names (nearly all) that is code-unit order. */
function sortNames(names: string[]): string[] {
  if (names.every((name) => ASCII.test(name))) return names.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return names.sort(byteOrder);
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
  const st = await lstat(abs, { bigint: true });
  if (!st.isFile()) throw new AutotestError('ERR_PACK', `${abs}: not a regular file`);
  return {
    path: rel, absPath: abs, kind: 'file', mode: (st.mode & 0o111n) !== 0n ? 0o755 : 0o644, size: Number(st.size), linkTarget: undefined,
    statKey: `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}:${st.mode}`,
    changedMs: Number(st.mtimeNs > st.ctimeNs ? st.mtimeNs : st.ctimeNs) / 1e6,
  };
}

/**
 * Lists a package folder in tarball order (byte order of paths, folders before their
 * contents), leaving out what `exclude` names. Only files, folders and symlinks that stay
 * inside the package can be packed; anything else is an error naming the entry.
 *
 * The walk is synchronous: it is the whole cost of an unchanged re-run, and a thread-pool
 * round trip per lstat costs more than the lstat itself (the walk then runs at about the
 * speed of `find -printf`); a package folder is walked in one go.
 */
export function walkTree(root: string, exclude: ExcludeRule): Promise<TreeEntry[]> {
  const entries: TreeEntry[] = [];
  // path.join on every entry costs as much as its lstat; rel never holds '.', '..' or '//'.
  const base = root.endsWith('/') ? root : `${root}/`;
  const visit = (relDir: string): void => {
    const names = sortNames(readdirSync(relDir === '' ? root : `${base}${relDir}`));
    for (const name of names) {
      const rel = relDir === '' ? name : `${relDir}/${name}`;
      const abs = `${base}${rel}`;
      const st = lstatSync(abs, { bigint: true });
      const isDir = st.isDirectory();
      if (exclude(rel, isDir)) continue;
      const statKey = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}:${st.mode}`;
      const changedMs = Number(st.mtimeNs > st.ctimeNs ? st.mtimeNs : st.ctimeNs) / 1e6;
      if (isDir) {
        entries.push({ path: rel, absPath: abs, kind: 'dir', mode: 0o755, size: 0, linkTarget: undefined, statKey, changedMs });
        visit(rel);
      } else if (st.isFile()) {
        const mode = (st.mode & 0o111n) !== 0n ? 0o755 : 0o644;
        entries.push({ path: rel, absPath: abs, kind: 'file', mode, size: Number(st.size), linkTarget: undefined, statKey, changedMs });
      } else if (st.isSymbolicLink()) {
        const target = readlinkSync(abs);
        if (!linkStaysInside(rel, target)) {
          throw new AutotestError('ERR_PACK', `${abs}: symlink to "${target}" points outside its package`, {
            hint: 'packages are installed on other machines: replace the link by the file, or point it inside the package folder',
          });
        }
        entries.push({ path: rel, absPath: abs, kind: 'symlink', mode: 0o777, size: 0, linkTarget: target, statKey, changedMs });
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

/**
 * A digest of what the tree looks like on disk, without reading file contents: when it is
 * unchanged since the last pack, the package is unchanged too.
 */
export function treeFingerprint(entries: TreeEntry[], salt: string): string {
  const hash = createHash('sha256').update(salt);
  for (const entry of entries) {
    hash.update(`${entry.kind}\0${entry.path}\0${entry.mode}\0${entry.linkTarget ?? ''}\0${entry.statKey}\n`);
  }
  return hash.digest('hex');
}
