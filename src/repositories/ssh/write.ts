import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { AutotestError } from '../../errors.js';
import type { Location } from '../../config/index.js';
import { isDeadTemp, isTempName, tempPathFor } from '../../fs/atomic.js';
import { sshHost, type SshHost } from '../../ssh/session.js';
import { flockCommand, LOCK_NAME, withHeldLock } from '../lock.js';
import { targetFromStore, type FileInfo, type RepositoryStore, type TargetOptions } from '../store.js';
import type { UploadTarget } from '../types.js';

type SshLocation = Extract<Location, { kind: 'ssh' }>;

const GB = 1e9;

/*
 * The remote side runs only POSIX sh, coreutils, findutils and flock(1), present on every
 * Linux test host. Each script is fixed text; the paths reach it as positional arguments,
 * quoted by shellQuote, never pasted into the script.
 */
const PREPARE = `d=$1
created=no
if [ ! -e "$d" ]; then mkdir -p -- "$d" || exit 10; created=yes; fi
[ -d "$d" ] || exit 11
p=$(mktemp "$d/.write-probe.XXXXXX" 2>/dev/null) || exit 12
rm -f -- "$p"
avail=$(df -P -k -- "$d" | awk 'NR==2 {print $4}')
echo "$created $avail"`;

const READ_TEXT = `if [ -f "$1" ]; then echo present; exec cat -- "$1"; else echo absent; fi`;

/** The exit status of WRITE_FILE when the copy failed on a disk with less than FULL_DISK_KB left. */
const FULL_DISK_EXIT = 28;
/** Free space (KiB) under which a failed copy is put down to a full disk: df's own rounding, a block or two. */
const FULL_DISK_KB = 64;

/*
 * $1 temp name, $2 final name (empty: leave it under the temp name), $3 the size expected.
 * A copy that fails on a (nearly) full disk exits FULL_DISK_EXIT: the free space is read
 * before the partial file is removed, while the disk is still full, so the cause is told by
 * a number and never by the words of cat's error. df is asked about the folder, which is
 * there even when the temp file could not be made; a free space it cannot tell is no full disk.
 * The size check matters: when the local side dies mid-stream, cat sees only an early end of
 * input and succeeds; a short file must never be renamed into place.
 */
const WRITE_FILE = `umask 022
if ! cat > "$1"; then
  avail=$(df -P -k -- "$(dirname -- "$1")" 2>/dev/null | awk 'NR==2 {print $4}')
  rm -f -- "$1"
  [ -n "$avail" ] && [ "$avail" -lt ${FULL_DISK_KB.toString()} ] && exit ${FULL_DISK_EXIT.toString()}
  exit 1
fi
size=$(wc -c < "$1")
if [ "$size" -ne "$3" ]; then rm -f -- "$1"; echo "received $size of $3 bytes" >&2; exit 21; fi
chmod 0644 -- "$1" && sync -- "$1" || { rm -f -- "$1"; exit 1; }
if [ -n "$2" ]; then mv -f -- "$1" "$2" || { rm -f -- "$1"; exit 1; }; fi`;

const SIZE = `if [ -f "$1" ]; then wc -c < "$1"; else echo none; fi`;

const LIST = `cd -- "$1" && find . -mindepth 1 -maxdepth 1 -type f -printf '%f\\0%s\\0%T@\\0'`;

const MOVE = `d=$1; shift
while [ $# -gt 1 ]; do mv -f -- "$1" "$2" || exit 1; shift 2; done
sync -- "$d"`;

const DIGEST = `[ -f "$1" ] || exit 20
md5sum < "$1" && sha256sum < "$1" && wc -c < "$1"`;

function refused(name: string, why: string, hint: string, cause?: unknown): AutotestError {
  return new AutotestError('ERR_LOCATION_REFUSED', `upload location ${name}: ${why}`, { hint, cause });
}

function lines(buffer: Buffer): string[] {
  return buffer.toString('utf8').split('\n');
}

export function createSshTarget(location: SshLocation, options: TargetOptions = {}): UploadTarget {
  if (!options.resources) throw new Error('an ssh upload target made without the resources of a command or server');
  return targetFromStore(createSshStore(location, sshHost(location, options.resources)), options);
}

function createSshStore(location: SshLocation, host: SshHost): RepositoryStore {
  const dir = location.path;
  const name = location.text;
  const inDir = (file: string): string => path.posix.join(dir, file);
  const sh = (script: string, args: string[]): string[] => ['sh', '-c', script, 'sh', ...args];

  const store: RepositoryStore = {
    location,
    name,

    async prepare({ minimumFreeBytes, neededBytes }) {
      await host.connect();
      const result = await host.run(sh(PREPARE, [dir]), { allowCodes: [10, 11, 12] });
      if (result.code === 10)
        throw refused(
          name,
          `does not exist and cannot be created${result.stderr ? ` (${result.stderr})` : ''}`,
          'create the folder on the host or fix upload_location',
        );
      if (result.code === 11) throw refused(name, 'exists but is not a folder', 'point upload_location at a folder');
      if (result.code === 12) throw refused(name, 'is not writable', 'fix its permissions or mount on the host, or remove it from upload_location');
      const [created, availText] = result.stdout.toString('utf8').trim().split(' ');
      const free = Number(availText) * 1024;
      if (!Number.isFinite(free))
        throw refused(name, `cannot read its free space (df said "${result.stdout.toString('utf8').trim()}")`, 'check that df works on the host');
      const wanted = Math.max(minimumFreeBytes, neededBytes);
      if (free < wanted) {
        throw new AutotestError(
          'ERR_NO_SPACE',
          `upload location ${name}: ${(free / GB).toFixed(3)} GB free, ${(wanted / GB).toFixed(3)} GB needed (minimum_free_space ${(minimumFreeBytes / GB).toString()} GB)`,
          { hint: 'free some space there, or lower minimum_free_space in [PACKAGES]' },
        );
      }
      return { created: created === 'yes' };
    },

    async readText(file) {
      const { stdout } = await host.run(sh(READ_TEXT, [inDir(file)]));
      const newline = stdout.indexOf(10);
      const head = stdout.subarray(0, newline === -1 ? stdout.length : newline).toString('utf8');
      if (head === 'absent') return undefined;
      if (head !== 'present') throw new AutotestError('ERR_SSH', `ssh ${host.name}: unexpected answer reading ${inDir(file)}`);
      return stdout.subarray(newline + 1).toString('utf8');
    },

    async writeText(file, text) {
      await host.run(sh(WRITE_FILE, [tempPathFor(inDir(file)), inDir(file), Buffer.byteLength(text).toString()]), { input: text });
    },

    async size(file) {
      const answer = (await host.run(sh(SIZE, [inDir(file)]))).stdout.toString('utf8').trim();
      return answer === 'none' ? undefined : Number(answer);
    },

    async list() {
      const parts = (await host.run(sh(LIST, [dir]))).stdout.toString('utf8').split('\0');
      const files = new Map<string, FileInfo>();
      for (let i = 0; i + 2 < parts.length; i += 3) {
        files.set(parts[i] ?? '', { size: Number(parts[i + 1]), mtimeMs: Number(parts[i + 2]) * 1000 });
      }
      return files;
    },

    async stage(file, source) {
      const tempPath = tempPathFor(inDir(file));
      const { size } = await stat(source);
      const result = await host.run(sh(WRITE_FILE, [tempPath, '', size.toString()]), {
        input: createReadStream(source),
        timeoutMs: 3_600_000,
        allowCodes: [1, 21, FULL_DISK_EXIT],
      });
      if (result.code !== 0) {
        if (result.code === FULL_DISK_EXIT) {
          throw new AutotestError('ERR_NO_SPACE', `upload location ${name}: disk full while copying ${file}`, {
            hint: 'free some space there; nothing was published',
          });
        }
        throw refused(name, `cannot write ${file}${result.stderr ? `: ${result.stderr}` : ''}`, 'check the folder on the host');
      }
      return { file, tempPath };
    },

    async moveIntoPlace(staged) {
      await host.run(sh(MOVE, [dir, ...staged.flatMap((s) => [s.tempPath, inDir(s.file)])]));
    },

    async remove(files) {
      if (files.length > 0) await host.run(['rm', '-f', '--', ...files.map(inDir)]);
    },

    async discard(staged) {
      await store.remove(staged.map((s) => path.posix.basename(s.tempPath)));
    },

    async digest(file) {
      const result = await host.run(sh(DIGEST, [inDir(file)]), { allowCodes: [20], timeoutMs: 3_600_000 });
      if (result.code === 20) throw new AutotestError('ERR_NOT_FOUND', `${name}: ${file} is missing`);
      const [md5Line = '', shaLine = '', sizeLine = ''] = lines(result.stdout);
      return { md5: md5Line.slice(0, 32), sha256: shaLine.slice(0, 64), size: Number(sizeLine.trim()) };
    },

    async cleanTemps() {
      const dead = [...(await store.list())].filter(([file, info]) => isTempName(file) && isDeadTemp(file, info.mtimeMs)).map(([file]) => file);
      await store.remove(dead);
      return dead;
    },

    withLock: async (work) => withHeldLock(await host.spawn(flockCommand(inDir(LOCK_NAME))), name, work),
  };
  return store;
}
