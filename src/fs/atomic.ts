import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';
import { open, readdir, rename, rm, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { errnoCode } from '../errors.js';

const TEMP_PREFIX = '.tmp.';

function hostName(): string {
  return hostname().replace(/[^A-Za-z0-9-]/g, '_');
}

let runtime: string | undefined;

/**
 * This kernel's boot and PID namespace, hashed: a pid says whether its writer lives only to
 * a reader that shares both. Two machines of one host name (VMs cloned from one image), or
 * two containers, writing to one shared folder get different tags; so does a host once it
 * has rebooted. Empty where /proc does not tell (the host name alone then).
 */
function runtimeId(): string {
  if (runtime === undefined) {
    try {
      const seed = `${readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()} ${readlinkSync('/proc/self/ns/pid')}`;
      runtime = createHash('sha256').update(seed).digest('hex').slice(0, 8);
    } catch {
      runtime = '';
    }
  }
  return runtime;
}

/** The writer part of this process's temp names: host name, and `~` and the runtime id. */
export function hostTag(): string {
  const id = runtimeId();
  return id === '' ? hostName() : `${hostName()}~${id}`;
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
 * Whether a temp file was left by a writer that died: one of this host, boot and PID
 * namespace whose process is gone; any other's (other hosts, containers, boots: shared
 * folders, remote locations) once untouched for a day.
 */
export function isDeadTemp(name: string, mtimeMs: number | undefined): boolean {
  if (!isTempName(name)) return false;
  const [host, pidText] = name.slice(TEMP_PREFIX.length).split('.');
  const pid = Number(pidText);
  if (host === hostTag() && Number.isInteger(pid)) return !pidIsAlive(pid);
  return mtimeMs !== undefined && Date.now() - mtimeMs > FOREIGN_TEMP_MAX_AGE_MS;
}

/**
 * Whether a temp name carries this host name alone, as names made before the runtime id did:
 * this host's, before some reboot, or another machine's of the same name.
 */
export function isThisHostTemp(name: string): boolean {
  return isTempName(name) && name.slice(TEMP_PREFIX.length).split('.')[0] === hostName();
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
