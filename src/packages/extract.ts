import { createReadStream } from 'node:fs';
import { link, lstat, mkdir, open, realpath, rm, symlink, unlink } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { AutotestError, describeError, errnoCode, isAutotestError } from '../errors.js';
import { createDecompressor, sniffCompression } from './compress.js';
import { linkStaysInside } from './tree.js';

function unsafe(archive: string, entry: string, why: string): AutotestError {
  return new AutotestError('ERR_UNSAFE_ARCHIVE', `${archive}: entry ${JSON.stringify(entry)} refused: ${why}`, {
    hint: 'the archive was not written by this packager or was tampered with; nothing was installed',
  });
}

/** The entry's path inside the install folder, or an error when it could leave it. */
export function checkEntryPath(archive: string, name: string): string {
  if (name.includes('\0')) throw unsafe(archive, name, 'contains a NUL byte');
  if (name.startsWith('/')) throw unsafe(archive, name, 'absolute path');
  const parts = name.split('/').filter((part) => part !== '' && part !== '.');
  if (parts.includes('..')) throw unsafe(archive, name, '".." leaves the install folder');
  return parts.join('/');
}

async function readHead(file: string): Promise<Buffer> {
  const handle = await open(file, 'r');
  try {
    const buffer = Buffer.alloc(4);
    const { bytesRead } = await handle.read(buffer, 0, 4, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/** Throws when any folder on the way from `root` to `rel`'s parent is a symlink. */
async function checkParents(archive: string, root: string, rel: string, entryName: string): Promise<void> {
  const parts = rel.split('/').slice(0, -1);
  let current = root;
  for (const part of parts) {
    current = path.join(current, part);
    const st = await lstat(current);
    if (!st.isDirectory()) throw unsafe(archive, entryName, `"${path.relative(root, current)}" on its path is not a folder (a symlink?)`);
  }
}

/** Makes room for an entry: an earlier file or link of the same name is replaced, never followed. */
async function clearTarget(target: string): Promise<void> {
  try {
    const st = await lstat(target);
    if (st.isDirectory()) throw new Error(`"${target}" is already a folder`);
    await unlink(target);
  } catch (error) {
    if (errnoCode(error) !== 'ENOENT') throw error;
  }
}

export interface ExtractResult {
  files: number;
  bytes: number;
}

/**
 * Extracts a package tarball into `dest`, which must not exist yet. Refuses absolute paths,
 * "..", links leaving `dest`, hardlinks to anything but an earlier file of the archive,
 * devices and FIFOs; never takes owners from the archive and keeps only 0755 of the modes.
 * On any failure `dest` is removed whole: nothing half-extracted is left.
 */
export async function extractTarball(archive: string, dest: string, limits: { maxBytes?: number } = {}): Promise<ExtractResult> {
  const compression = sniffCompression(await readHead(archive));
  if (!compression) {
    throw new AutotestError('ERR_CORRUPT_ARCHIVE', `${archive}: not a bzip2, gzip or zstd tarball`);
  }
  await mkdir(path.dirname(dest), { recursive: true });
  await mkdir(dest);
  // Started only once dest is ours, so a refused dest leaves no process behind; a missing
  // tool leaves no empty folder behind.
  let decompressor;
  try {
    decompressor = await createDecompressor(compression);
  } catch (error) {
    await rm(dest, { recursive: true, force: true });
    throw error;
  }
  const root = await realpath(dest);
  const result: ExtractResult = { files: 0, bytes: 0 };
  const extract = tar.extract();

  let current: { destroy: (error?: Error) => unknown } | undefined;
  const consume = async (): Promise<void> => {
    for await (const entry of extract) {
      current = entry;
      const header = entry.header;
      const rel = checkEntryPath(archive, header.name);
      const target = path.join(root, rel);
      if (rel === '') {
        if (header.type !== 'directory') throw unsafe(archive, header.name, 'names the install folder itself');
        entry.resume();
        continue;
      }
      await checkParents(archive, root, rel, header.name);
      const mode = header.mode & 0o755;
      switch (header.type) {
        case 'directory': {
          try {
            await mkdir(target, { mode: mode | 0o700 });
          } catch (error) {
            if (errnoCode(error) !== 'EEXIST' || !(await lstat(target)).isDirectory()) throw error;
          }
          entry.resume();
          break;
        }
        case 'file':
        case 'contiguous-file': {
          if (limits.maxBytes !== undefined && result.bytes + header.size > limits.maxBytes) {
            throw unsafe(archive, header.name, `unpacks to more than ${limits.maxBytes.toString()} bytes`);
          }
          await clearTarget(target);
          const handle = await open(target, 'wx', mode);
          try {
            for await (const chunk of entry) await handle.write(chunk as Buffer);
          } finally {
            await handle.close();
          }
          result.files += 1;
          result.bytes += header.size;
          break;
        }
        case 'symlink': {
          const linkname = header.linkname;
          if (!linkStaysInside(rel, linkname)) throw unsafe(archive, header.name, `symlink to "${linkname}" points outside the install folder`);
          await clearTarget(target);
          await symlink(linkname, target);
          entry.resume();
          break;
        }
        case 'link': {
          const linkname = header.linkname;
          if (linkname.startsWith('/') || linkname.split('/').includes('..')) {
            throw unsafe(archive, header.name, `hardlink to "${linkname}" leaves the install folder`);
          }
          const linkRel = checkEntryPath(archive, linkname);
          const source = path.join(root, linkRel);
          let st;
          try {
            st = await lstat(source);
          } catch {
            throw unsafe(archive, header.name, `hardlink to "${header.linkname}", which is not an earlier file of the archive`);
          }
          if (!st.isFile()) throw unsafe(archive, header.name, `hardlink to "${header.linkname}", which is not a regular file`);
          await checkParents(archive, root, linkRel, header.name);
          await clearTarget(target);
          await link(source, target);
          entry.resume();
          break;
        }
        default:
          throw unsafe(archive, header.name, `${header.type} entries (devices, FIFOs) are not allowed`);
      }
    }
  };

  const consuming = consume();
  try {
    await Promise.all([
      pipeline(createReadStream(archive), decompressor.input),
      pipeline(decompressor.output, extract),
      decompressor.done,
      consuming,
    ]);
  } catch (error) {
    const stop = new Error('extraction stopped');
    decompressor.input.destroy();
    decompressor.output.destroy();
    current?.destroy(stop);
    extract.destroy(stop);
    // Only once nothing writes into dest anymore can it be removed whole.
    await consuming.catch(() => undefined);
    await rm(dest, { recursive: true, force: true });
    if (isAutotestError(error)) throw error;
    const code = errnoCode(error);
    if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EACCES' || code === 'EROFS' || code === 'EPERM') {
      throw new AutotestError('ERR_LOCATION_REFUSED', `${dest}: cannot write the extracted package (${code})`, {
        hint: code === 'ENOSPC' || code === 'EDQUOT' ? 'free some space there and install again' : 'check the permissions of the install folder',
        cause: error,
      });
    }
    throw new AutotestError('ERR_CORRUPT_ARCHIVE', `${archive}: cannot extract: ${describeError(error)}`, {
      hint: 'the tarball is damaged or truncated; fetch it again',
      cause: error,
    });
  }
  return result;
}
