import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cp, mkdir, mkdtemp, readFile, readdir, rm, rmdir, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { TestContext } from 'node:test';
import { parseChecksumFile, parseManifest, digestFile, type IndexEntry, type RepositoryIndex } from '../src/packages/index.js';

export const execFileAsync = promisify(execFile);
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CLI = path.join(ROOT, 'dist/src/cli/main.js');
export const EXAMPLE_CLIENT = path.join(ROOT, 'example/client');

/** A fresh folder removed when the test ends. */
export async function tempDir(t: TestContext, prefix = 'autotest-test-'): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), prefix));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A small tmpfs of the test's own beside `dir`, unmounted when the test ends. */
export async function mountTmpfs(t: TestContext, dir: string, size: string, options = ''): Promise<string> {
  const mnt = `${dir}-mnt`;
  await mkdir(mnt);
  await execFileAsync('mount', ['-t', 'tmpfs', '-o', `size=${size}${options}`, 'tmpfs', mnt]);
  t.after(async () => {
    await execFileAsync('umount', [mnt]);
    await rmdir(mnt);
  });
  return mnt;
}

/** A private copy of the example client tree, safe to change. */
export async function copyExampleTree(dir: string): Promise<string> {
  const dest = path.join(dir, 'client');
  await cp(EXAMPLE_CLIENT, dest, { recursive: true, verbatimSymlinks: true });
  return dest;
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the autotest CLI with its own cache folder under `cwd`. */
export function runCli(args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv }): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      cwd: options.cwd,
      env: { ...process.env, AUTOTEST_CACHE_DIR: path.join(options.cwd, '.cache'), AUTOTEST_CONFIG: '', ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => {
      resolve({ code, stdout, stderr });
    });
  });
}

/** Writes a global_config.ini with a [PACKAGES] section made of `keys`. */
export async function writeConfig(dir: string, keys: Record<string, string>, name = 'global_config.ini'): Promise<string> {
  const file = path.join(dir, name);
  const lines = ['[PACKAGES]', ...Object.entries(keys).map(([k, v]) => `${k}: ${v}`), ''];
  await writeFile(file, lines.join('\n'));
  return file;
}

/** Makes a client tree of `count` tests with `bytes` of content each (half text, half incompressible). */
export async function generateTree(dir: string, count: number, bytes: number): Promise<string> {
  const root = path.join(dir, 'gen-client');
  await mkdir(path.join(root, 'common_lib'), { recursive: true });
  await writeFile(path.join(root, 'common_lib', 'job.mjs'), 'export const job = 1;\n');
  for (let i = 0; i < count; i += 1) {
    const test = path.join(root, 'tests', `t${String(i).padStart(3, '0')}`);
    await mkdir(test, { recursive: true });
    const text = Buffer.from(`test ${i} log line with some words to compress\n`.repeat(Math.ceil(bytes / 2 / 44))).subarray(0, bytes / 2);
    const random = randomBytes(bytes / 2);
    await writeFile(path.join(test, 'notes.txt'), text);
    await writeFile(path.join(test, 'data.bin'), random);
  }
  return root;
}

export interface Consistency {
  entries: number;
  problems: string[];
}

/**
 * Checks the invariant a repository folder must keep at every moment: each entry of
 * packages.checksum and packages.json names a file present with exactly that checksum.
 */
export async function checkConsistency(dir: string): Promise<Consistency> {
  const problems: string[] = [];
  const names = new Set(await readdir(dir));
  const checksumText = names.has('packages.checksum') ? await readFile(path.join(dir, 'packages.checksum'), 'utf8') : '';
  const manifestText = names.has('packages.json') ? await readFile(path.join(dir, 'packages.json'), 'utf8') : undefined;
  const checksums = parseChecksumFile(checksumText, 'packages.checksum');
  const manifest: RepositoryIndex = manifestText === undefined ? new Map<string, IndexEntry>() : parseManifest(manifestText, 'packages.json');
  for (const [file, md5] of checksums) {
    if (!names.has(file)) problems.push(`${file}: in packages.checksum, missing`);
    else if ((await digestFile(path.join(dir, file))).md5 !== md5) problems.push(`${file}: md5 differs from packages.checksum`);
  }
  for (const entry of manifest.values()) {
    if (!names.has(entry.file)) problems.push(`${entry.file}: in packages.json, missing`);
    else {
      const digests = await digestFile(path.join(dir, entry.file));
      if (digests.sha256 !== entry.sha256 || digests.size !== entry.size) problems.push(`${entry.file}: sha256/size differ from packages.json`);
    }
  }
  return { entries: checksums.size, problems };
}

export async function md5sumCheck(dir: string): Promise<string> {
  const { stdout } = await execFileAsync('md5sum', ['-c', 'packages.checksum'], { cwd: dir });
  return stdout;
}

/** A folder of links to every command of /usr/bin and /bin but `missing`: a PATH for a host without it. */
export async function pathWithout(dir: string, missing: string): Promise<string> {
  const bin = path.join(dir, `bin-without-${missing}`);
  await mkdir(bin);
  for (const from of ['/usr/local/bin', '/usr/bin', '/bin']) {
    for (const name of await readdir(from).catch(() => [])) {
      if (name === missing) continue;
      await symlink(path.join(from, name), path.join(bin, name)).catch(() => undefined);
    }
  }
  return bin;
}
