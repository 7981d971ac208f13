import { randomBytes } from 'node:crypto';
import { open, readdir, rename, rm, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { errnoCode } from '../errors.js';

const TEMP_PREFIX = '.tmp.';

function hostTag(): string {
  return hostname().replace(/[^A-Za-z0-9-]/g, '_');
}

/** The longest file name Linux file systems take (NAME_MAX, bytes). */
const NAME_MAX = 255;

/**
 * A temporary name in the same folder as `target`, so the final rename is atomic. It
 * carries host and pid, so a later run can tell a dead writer's leftovers from a live one's.
 * The tag alone makes it unique; the target's name, there for a reader, is cut to NAME_MAX
 * (a long package name on a host with a long name would not fit otherwise).
 */
export function tempPathFor(target: string): string {
  const tag = `${hostTag()}.${process.pid.toString()}.${randomBytes(4).toString('hex')}`;
  let name = `${TEMP_PREFIX}${tag}.${path.basename(target)}`;
  while (Buffer.byteLength(name) > NAME_MAX) name = name.slice(0, -1);
  return path.join(path.dirname(target), name);
}

export function isTempName(name: string): boolean {
  return name.startsWith(TEMP_PREFIX);
}

export async function fsyncPath(file: string): Promise<void> {
  const handle = await open(file, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Writes `data` to `target` through a synced temp file and a rename; the temp goes on failure. */
export async function writeFileAtomic(target: string, data: string | Buffer, mode = 0o644): Promise<void> {
  const temp = tempPathFor(target);
  try {
    const handle = await open(temp, 'wx', mode);
    try {
      await handle.writeFile(data);
      await handle.chmod(mode);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, target);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

function pidIsAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return errnoCode(error) === 'EPERM';
  }
}

const FOREIGN_TEMP_MAX_AGE_MS = 24 * 3600 * 1000;

/**
 * Whether a temp file was left by a writer that died: this host's whose process is gone,
 * other hosts' (shared folders, remote locations) once untouched for a day.
 */
export function isDeadTemp(name: string, mtimeMs: number | undefined): boolean {
  if (!isTempName(name)) return false;
  const [host, pidText] = name.slice(TEMP_PREFIX.length).split('.');
  const pid = Number(pidText);
  if (host === hostTag() && Number.isInteger(pid)) return !pidIsAlive(pid);
  return mtimeMs !== undefined && Date.now() - mtimeMs > FOREIGN_TEMP_MAX_AGE_MS;
}

/** Whether a temp name was made on this host (whatever its process). */
export function isThisHostTemp(name: string): boolean {
  return isTempName(name) && name.slice(TEMP_PREFIX.length).split('.')[0] === hostTag();
}

/** Removes temp files left by writers that died (see isDeadTemp); returns the names removed. */
export async function removeDeadTemps(dir: string): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await readdir(dir)) {
    if (!isTempName(name)) continue;
    const st = await stat(path.join(dir, name)).catch(() => undefined);
    if (isDeadTemp(name, st?.mtimeMs)) {
      await rm(path.join(dir, name), { force: true, recursive: true });
      removed.push(name);
    }
  }
  return removed;
}
