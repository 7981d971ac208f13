import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { AutotestError, errnoCode } from '../errors.js';
import type { Compression } from '../config/index.js';
import {
  CLIENT_PACKAGE_NAME,
  checkFileName,
  checkName,
  combineRules,
  fileEntry,
  packageFileName,
  readPackExclude,
  sortDirents,
  walkTree,
  type ExcludeRule,
  type PackageType,
  type TreeEntry,
} from '../packages/index.js';

/** One package the client tree can produce. */
export interface PackageSource {
  type: PackageType | 'file';
  name: string;
  /** The folder packed, or for plain files the file itself. */
  root: string;
  fileName: string;
}

export interface Selection {
  all: boolean;
  tests: string[];
  profilers: string[];
  deps: string[];
  client: boolean;
  files: string[];
}

/** The example client tree shipped with the project: the default when none is configured. */
export const BUNDLED_CLIENT_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../example/client');

const TYPE_FOLDERS: Record<Exclude<PackageType, 'client'>, string[]> = {
  // site_tests come second so that a site test overrides a test of the same name, as in Autotest.
  test: ['tests', 'site_tests'],
  dep: ['deps'],
  profiler: ['profilers'],
};

async function isDir(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch (error) {
    if (errnoCode(error) === 'ENOENT' || errnoCode(error) === 'ENOTDIR') return false;
    throw error;
  }
}

export async function checkClientTree(clientDir: string): Promise<void> {
  if (!(await isDir(clientDir))) {
    throw new AutotestError('ERR_CLIENT_TREE', `client tree ${clientDir} does not exist or is not a folder`, {
      hint: 'pass --client-dir PATH or set client_dir in [PACKAGES]',
    });
  }
}

/** The folders of one package type, by name; missing type folders (site_tests/) count as empty. */
async function listFolders(clientDir: string, type: Exclude<PackageType, 'client'>): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  for (const folder of TYPE_FOLDERS[type]) {
    const base = path.join(clientDir, folder);
    if (!(await isDir(base))) continue;
    // The entry's type from the folder listing (sorted as the walk sorts); only a link (or a
    // file system that gives no type) gets a stat of its own: a stat each was 10 ms a run.
    const entries = sortDirents(await readdir(base, { withFileTypes: true }));
    for (const entry of entries) {
      const { name } = entry;
      if (name.startsWith('.')) continue;
      const known = entry.isDirectory() || entry.isFile() || entry.isFIFO() || entry.isSocket() || entry.isCharacterDevice() || entry.isBlockDevice();
      if (!(known ? entry.isDirectory() : await isDir(path.join(base, name)))) continue;
      checkName(name, `${type} folder name (${path.join(base, name)})`);
      found.set(name, path.join(base, name));
    }
  }
  return found;
}

/**
 * The client package leaves out every test, site test, dep and profiler subfolder (they are
 * packages of their own) and the client's run-time folders, but keeps profilers/'s own files.
 */
const clientRule: ExcludeRule = (rel, isDir) => {
  // Asked of every entry of the client's walk: no split, no array.
  const slash = rel.indexOf('/');
  if (slash === -1) return false;
  const top = rel.slice(0, slash);
  if (top === 'tests' || top === 'site_tests' || top === 'deps' || top === 'results' || top === 'tmp' || top === 'packages') return true;
  return top === 'profilers' && isDir && !rel.includes('/', slash + 1);
};

export async function excludeRuleFor(source: PackageSource): Promise<ExcludeRule> {
  const own = await readPackExclude(source.root);
  return source.type === 'client' ? combineRules(clientRule, own) : combineRules(own);
}

/** Resolves what the user asked for into package sources; unknown names are errors. */
/** Where `npm run build` puts the bundled client runtime (scripts/build-client.sh). */
export const CLIENT_RUNTIME_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../client-runtime');
const RUNTIME_FILES = ['autotest-client.mjs', 'hash-worker.mjs'];

/**
 * What a package packs: its folder's entries; for the client package, also the client
 * runtime (one bundled file and its hashing thread) under bin/, so that a test machine with
 * Node.js and nothing else runs jobs from the unpacked package.
 */
export async function packageEntries(source: PackageSource, options: { fullTree?: boolean } = {}): Promise<TreeEntry[]> {
  // The full tree (autoserv's last way to put a client on a machine) keeps tests, deps and profilers.
  const exclude = options.fullTree === true ? combineRules(await readPackExclude(source.root)) : await excludeRuleFor(source);
  const entries = await walkTree(source.root, exclude);
  if (source.type !== 'client') return entries;
  const runtime: TreeEntry[] = [];
  for (const name of RUNTIME_FILES) {
    try {
      runtime.push(await fileEntry(path.join(CLIENT_RUNTIME_DIR, name), `bin/${name}`));
    } catch (error) {
      throw new AutotestError('ERR_PACK', `the client runtime ${path.join(CLIENT_RUNTIME_DIR, name)} is missing (${errnoCode(error) ?? String(error)})`, {
        hint: 'build it with "npm run build"',
        cause: error,
      });
    }
  }
  const taken = new Set(entries.map((entry) => entry.path));
  for (const entry of runtime) {
    if (taken.has(entry.path))
      throw new AutotestError(
        'ERR_PACK',
        `${path.join(source.root, entry.path)}: the client tree may not hold this file: the packager puts the client runtime there`,
      );
  }
  const bin = entries.some((entry) => entry.path === 'bin' && entry.kind === 'dir')
    ? []
    : [
        {
          path: 'bin',
          absPath: path.join(source.root, 'bin'),
          kind: 'dir' as const,
          mode: 0o755,
          size: 0,
          linkTarget: undefined,
          dev: 0,
          ino: 0,
          mtimeMs: 0,
          ctimeMs: 0,
        },
      ];
  return [...entries, ...bin, ...runtime];
}

export async function selectSources(clientDir: string, selection: Selection, compression: Compression): Promise<PackageSource[]> {
  const sources = new Map<string, PackageSource>();
  const add = (source: PackageSource): void => {
    sources.set(source.fileName, source);
  };
  const needTree = selection.all || selection.client || selection.tests.length + selection.deps.length + selection.profilers.length > 0;
  if (needTree) await checkClientTree(clientDir);

  const wanted: [Exclude<PackageType, 'client'>, string[]][] = [
    ['test', selection.tests],
    ['dep', selection.deps],
    ['profiler', selection.profilers],
  ];
  for (const [type, names] of wanted) {
    if (!selection.all && names.length === 0) continue;
    const folders = await listFolders(clientDir, type);
    const chosen = selection.all ? [...folders.keys()] : names;
    for (const name of chosen) {
      const root = folders.get(name);
      if (!root) {
        throw new AutotestError(
          'ERR_UNKNOWN_PACKAGE',
          `${type} "${name}" not found: no folder ${TYPE_FOLDERS[type].map((f) => path.join(clientDir, f, name)).join(' or ')}`,
          {
            hint: `each folder of ${TYPE_FOLDERS[type].map((f) => path.join(clientDir, f)).join(' and ')} is a ${type}; check the name or --client-dir`,
          },
        );
      }
      add({ type, name, root, fileName: packageFileName(type, name, compression) });
    }
  }
  if (selection.all || selection.client) {
    add({ type: 'client', name: CLIENT_PACKAGE_NAME, root: clientDir, fileName: packageFileName('client', CLIENT_PACKAGE_NAME, compression) });
  }
  for (const file of selection.files) {
    const resolved = path.resolve(file);
    const fileName = checkFileName(path.basename(resolved));
    let st;
    try {
      st = await stat(resolved);
    } catch {
      throw new AutotestError('ERR_UNKNOWN_PACKAGE', `file ${resolved} does not exist`, { hint: 'check the path given to --file' });
    }
    if (!st.isFile())
      throw new AutotestError('ERR_UNKNOWN_PACKAGE', `${resolved} is not a regular file`, { hint: '--file publishes one file such as a kernel image' });
    add({ type: 'file', name: fileName, root: resolved, fileName });
  }
  if (sources.size === 0) {
    throw new AutotestError('ERR_USAGE', 'nothing to do: name packages with --all, -t, -d, -p, -c or -f');
  }
  return [...sources.values()];
}

/** File names a selection refers to, without needing the client tree (for remove). */
export function selectedFileNames(selection: Selection, compression: Compression): string[] {
  const names: string[] = [];
  for (const name of selection.tests) names.push(packageFileName('test', name, compression));
  for (const name of selection.deps) names.push(packageFileName('dep', name, compression));
  for (const name of selection.profilers) names.push(packageFileName('profiler', name, compression));
  if (selection.client) names.push(packageFileName('client', CLIENT_PACKAGE_NAME, compression));
  for (const file of selection.files) names.push(checkFileName(path.basename(file)));
  return names;
}
