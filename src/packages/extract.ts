import { createReadStream } from 'node:fs';
import { chmod, link, lstat, mkdir, open, realpath, rm, stat, symlink, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Header } from 'tar-stream';
import { AutotestError, describeError, errnoCode, isAutotestError } from '../errors.js';
import { createDecompressor, sniffCompression } from './compress.js';
import { linkStaysInside } from './tree.js';

function unsafe(archive: string, entry: string, why: string): AutotestError {
  return new AutotestError('ERR_UNSAFE_ARCHIVE', `${archive}: entry ${JSON.stringify(entry)} refused: ${why}`, {
    hint: 'the archive was not written by this packager or was tampered with; nothing was installed',
  });
}

/** An entry that cannot be written as given, though nothing about it is unsafe: say so, not "damaged". */
function conflict(archive: string, entry: string, why: string): AutotestError {
  return new AutotestError('ERR_BAD_ARCHIVE', `${archive}: entry ${JSON.stringify(entry)} refused: ${why}`, {
    hint: 'two entries of the archive claim the same path in different kinds; rebuild the archive; nothing was installed',
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

/**
 * The folders of one extraction: each is checked (or made) once, so the cost of an entry does
 * not grow with its depth. Missing parents are made (0755) as GNU tar makes them, because many
 * tools write no folder entries; a parent that exists as a symlink or a file is refused. A
 * folder once known stays one: no later entry may replace a folder (see clearTarget).
 */
class FolderSet {
  private readonly known = new Set<string>(['']);

  constructor(
    private readonly archive: string,
    private readonly root: string,
  ) {}

  /** Makes sure every folder on the way from the root to `rel`'s parent is a real folder. */
  async parentsOf(rel: string, entryName: string): Promise<void> {
    const slash = rel.lastIndexOf('/');
    if (slash < 0 || this.known.has(rel.slice(0, slash))) return;
    const missing: string[] = [];
    for (let folder = rel.slice(0, slash); !this.known.has(folder); folder = folder.slice(0, Math.max(0, folder.lastIndexOf('/')))) {
      missing.push(folder);
    }
    for (const folder of missing.reverse()) await this.ensure(folder, entryName, 0o755);
  }

  /** `rel` as a real folder: made with `mode`, or an existing folder (never a symlink to one). */
  async ensure(rel: string, entryName: string, mode: number): Promise<void> {
    const target = path.join(this.root, rel);
    try {
      await mkdir(target, { mode });
    } catch (error) {
      if (errnoCode(error) !== 'EEXIST') throw error;
      const st = await lstat(target);
      if (st.isSymbolicLink()) throw unsafe(this.archive, entryName, `"${rel}" on its path is a symlink, and nothing is written through a link`);
      if (!st.isDirectory()) throw conflict(this.archive, entryName, `"${rel}" on its path is a file of the archive, not a folder`);
    }
    this.known.add(rel);
  }

  has(rel: string): boolean {
    return this.known.has(rel);
  }
}

/** Makes room for an entry: an earlier file or link of the same name is replaced, never followed. */
async function clearTarget(archive: string, entryName: string, target: string): Promise<void> {
  try {
    const st = await lstat(target);
    if (st.isDirectory()) throw conflict(archive, entryName, 'a folder of that name came earlier in the archive');
    await unlink(target);
  } catch (error) {
    if (errnoCode(error) !== 'ENOENT') throw error;
  }
}

export interface ExtractResult {
  files: number;
  bytes: number;
}

export interface ExtractLimits {
  /** Bytes the archive's files may unpack to, all together. */
  maxBytes?: number;
  /** Entries of any kind (files, folders, links) the archive may hold. */
  maxEntries?: number;
  /** Where each limit comes from (say, "max_upload_entries = 1000 in [SERVER]"), named in a refusal. */
  names?: { maxBytes?: string; maxEntries?: string };
  /** Stops the extraction when aborted: nothing is kept and the signal's reason is thrown. */
  signal?: AbortSignal;
}

function overLimit(archive: string, entry: string, what: string, name: string | undefined): AutotestError {
  return new AutotestError(
    'ERR_TOO_LARGE',
    `${archive}: entry ${JSON.stringify(entry)} refused: the archive ${what}${name === undefined ? '' : ` (${name})`}`,
    {
      hint: `${name === undefined ? 'make the archive smaller' : `make the archive smaller or raise ${name.split(' ')[0] ?? name}`}; nothing was kept`,
    },
  );
}

const NO_SPACE = new Set(['ENOSPC', 'EDQUOT']);

/** The folder where the file system that holds `dir` is mounted: what a full disk is called by. */
async function mountPointOf(dir: string): Promise<string> {
  let current = path.resolve(dir);
  const { dev } = await stat(current);
  for (let parent = path.dirname(current); parent !== current; parent = path.dirname(current)) {
    if ((await stat(parent)).dev !== dev) break;
    current = parent;
  }
  return current;
}

/** What a full disk left of an extraction: the entry it stopped at, and what the archive still wanted. */
interface NoSpace {
  code: string;
  entry: string;
  cause: unknown;
  /** Bytes of the archive's files not written: the rest of the failed entry and every later one. */
  needed: number;
  entriesLeft: number;
}

async function noSpaceError(archive: string, dest: string, full: NoSpace, result: ExtractResult): Promise<AutotestError> {
  const mount = await mountPointOf(path.dirname(dest)).catch(() => path.dirname(dest));
  const what = full.code === 'EDQUOT' ? 'the disk quota is exceeded' : 'the disk is full';
  return new AutotestError(
    'ERR_NO_SPACE',
    `${dest}: ${what} (${full.code}) on the file system mounted at ${mount}: extracting ${archive} stopped at entry ${JSON.stringify(full.entry)} ` +
      `and needed at least ${full.needed.toString()} more bytes (the rest of that entry and ${full.entriesLeft.toString()} later ${full.entriesLeft === 1 ? 'entry' : 'entries'}; ` +
      `${(result.bytes + full.needed).toString()} bytes of files in all)`,
    {
      hint: `free at least ${full.needed.toString()} bytes on ${mount} and try again; nothing half-extracted was kept`,
      cause: full.cause,
    },
  );
}

/**
 * Extracts a package tarball into `dest`, which must not exist yet. Refuses absolute paths,
 * "..", links leaving `dest`, hardlinks to anything but an earlier file of the archive,
 * devices and FIFOs; never takes owners from the archive and keeps only 0755 of the modes.
 * On any failure `dest` is removed whole: nothing half-extracted is left. A full disk is
 * reported as one, with the bytes the rest of the archive still needed.
 */
export async function extractTarball(archive: string, dest: string, limits: ExtractLimits = {}): Promise<ExtractResult> {
  limits.signal?.throwIfAborted();
  const compression = sniffCompression(await readHead(archive));
  if (!compression) {
    throw new AutotestError('ERR_CORRUPT_ARCHIVE', `${archive}: not a bzip2, gzip or zstd tarball`);
  }
  // Loaded here: the packager, which never extracts, starts without it.
  const { default: tar } = await import('tar-stream');
  await mkdir(path.dirname(dest), { recursive: true });
  await mkdir(dest);
  // Started only once dest is ours, so a refused dest leaves no process behind; a missing
  // tool leaves no empty folder behind.
  let decompressor;
  try {
    decompressor = await createDecompressor(compression, archive);
  } catch (error) {
    await rm(dest, { recursive: true, force: true });
    throw error;
  }
  const root = await realpath(dest);
  const result: ExtractResult = { files: 0, bytes: 0 };
  const x: Extraction = { archive, root, folders: new FolderSet(archive, root), limits, result, written: 0 };
  const extract = tar.extract();
  const stop = new Error('extraction stopped');

  // The first failure of the writing side is the true cause: the stream errors it causes
  // afterwards ("Premature close" once the parser is torn down) must not replace it.
  let failure: unknown;
  let stopping = false;
  let full: NoSpace | undefined;
  let current: { destroy: (error?: Error) => unknown } | undefined;
  const consume = async (): Promise<void> => {
    let entries = 0;
    for await (const entry of extract) {
      current = entry;
      const { header } = entry;
      if (full) {
        // The disk is full: the rest of the archive is only read, to say how much it needed.
        full.needed += header.size;
        full.entriesLeft += 1;
        entry.resume();
        continue;
      }
      entries += 1;
      try {
        if (limits.maxEntries !== undefined && entries > limits.maxEntries) {
          throw overLimit(archive, header.name, `holds more than ${limits.maxEntries.toString()} entries`, limits.names?.maxEntries);
        }
        x.written = 0;
        await writeEntry(x, header, entry);
      } catch (error) {
        if (stopping) throw error;
        const code = errnoCode(error);
        if (code !== undefined && NO_SPACE.has(code)) {
          full = { code, entry: header.name, cause: error, needed: Math.max(0, header.size - x.written), entriesLeft: 0 };
          result.bytes += x.written;
          entry.resume();
          // The space goes back at once, not after the rest of the archive has been read.
          await rm(dest, { recursive: true, force: true });
          continue;
        }
        failure = entryFailure(archive, dest, header.name, error);
        throw failure;
      }
    }
    if (full) throw stop;
  };

  const abort = (): void => {
    extract.destroy(stop);
  };
  limits.signal?.addEventListener('abort', abort, { once: true });
  const consuming = consume();
  try {
    await Promise.all([pipeline(createReadStream(archive), decompressor.input), pipeline(decompressor.output, extract), decompressor.done, consuming]);
  } catch (error) {
    stopping = true;
    decompressor.input.destroy();
    decompressor.output.destroy();
    current?.destroy(stop);
    extract.destroy(stop);
    // Only once nothing writes into dest anymore can it be removed whole.
    await consuming.catch(() => undefined);
    await rm(dest, { recursive: true, force: true });
    if (full) throw await noSpaceError(archive, dest, full, result);
    throw extractionFailure(archive, { writing: failure, reading: error }, limits.signal);
  } finally {
    limits.signal?.removeEventListener('abort', abort);
  }
  return result;
}

/**
 * Why an extraction failed: the writing side's own failure, the caller's abort, or else the
 * archive as read (the decompressor's stream or the tar parser: a bad header checksum, data
 * that ends before the archive does).
 */
function extractionFailure(archive: string, { writing, reading: error }: { writing: unknown; reading: unknown }, signal: AbortSignal | undefined): unknown {
  if (isAutotestError(writing)) return writing;
  if (signal?.aborted) return signal.reason;
  if (isAutotestError(error)) return error;
  return new AutotestError('ERR_CORRUPT_ARCHIVE', `${archive}: cannot extract: ${describeError(error)}`, {
    hint: 'the tarball is damaged or truncated; fetch it again',
    cause: error,
  });
}

const WRITE_REFUSED = new Set(['EACCES', 'EROFS', 'EPERM']);

/** A failure while writing one entry (a full disk aside), with its true cause: the install folder's, or the entry's. */
function entryFailure(archive: string, dest: string, entryName: string, error: unknown): AutotestError {
  if (isAutotestError(error)) return error;
  const code = errnoCode(error);
  if (code !== undefined && WRITE_REFUSED.has(code)) {
    return new AutotestError('ERR_LOCATION_REFUSED', `${dest}: cannot write the extracted package (${code})`, {
      hint: 'check the permissions of the install folder',
      cause: error,
    });
  }
  return new AutotestError('ERR_BAD_ARCHIVE', `${archive}: entry ${JSON.stringify(entryName)} cannot be written: ${describeError(error)}`, {
    hint: 'this filesystem cannot hold the entry as the archive gives it; rebuild the archive',
    cause: error,
  });
}

interface Extraction {
  archive: string;
  root: string;
  folders: FolderSet;
  limits: ExtractLimits;
  result: ExtractResult;
  /** Bytes of the current entry written so far. */
  written: number;
}

/** Writes all of `chunk`: a write may take less than it was given. */
async function writeAll(x: Extraction, handle: FileHandle, chunk: Buffer): Promise<void> {
  for (let offset = 0; offset < chunk.length;) {
    const { bytesWritten } = await handle.write(chunk, offset, chunk.length - offset);
    offset += bytesWritten;
    x.written += bytesWritten;
  }
}

/** A regular file entry, within the byte bound; the rest of its body is read even after a failed write. */
async function writeFileEntry(x: Extraction, header: Header, body: AsyncIterable<unknown>, at: { target: string; mode: number }): Promise<void> {
  const { archive, result } = x;
  const size = header.size;
  if (x.limits.maxBytes !== undefined && result.bytes + size > x.limits.maxBytes) {
    throw overLimit(archive, header.name, `unpacks to more than ${x.limits.maxBytes.toString()} bytes`, x.limits.names?.maxBytes);
  }
  await clearTarget(archive, header.name, at.target);
  const handle = await open(at.target, 'wx', at.mode);
  // After a failed write the rest of the entry is still read (and dropped): leaving the
  // loop early would tear the whole archive stream down with a misleading error.
  let failed: Error | undefined;
  try {
    for await (const chunk of body) {
      if (failed === undefined)
        await writeAll(x, handle, chunk as Buffer).catch((error: unknown) => {
          failed = error instanceof Error ? error : new Error(String(error));
        });
    }
  } finally {
    await handle.close();
  }
  if (failed !== undefined) throw failed;
  result.files += 1;
  result.bytes += size;
}

/** A hardlink entry: only to an earlier regular file of the same archive. */
async function writeHardlink(x: Extraction, header: Header, target: string): Promise<void> {
  const { archive, root, folders } = x;
  const linkname = header.linkname;
  if (linkname.startsWith('/') || linkname.split('/').includes('..')) {
    throw unsafe(archive, header.name, `hardlink to "${linkname}" leaves the install folder`);
  }
  const linkRel = checkEntryPath(archive, linkname);
  const source = path.join(root, linkRel);
  // The source's folders were all made by this extraction when the source was written.
  const slash = linkRel.lastIndexOf('/');
  const st = folders.has(slash < 0 ? '' : linkRel.slice(0, slash)) ? await lstat(source).catch(() => undefined) : undefined;
  if (!st) throw unsafe(archive, header.name, `hardlink to "${linkname}", which is not an earlier file of the archive`);
  if (!st.isFile()) throw unsafe(archive, header.name, `hardlink to "${linkname}", which is not a regular file`);
  await clearTarget(archive, header.name, target);
  await link(source, target);
}

/** Writes one entry under the rules of extractTarball. */
async function writeEntry(x: Extraction, header: Header, body: AsyncIterable<unknown> & { resume(): unknown }): Promise<void> {
  const { archive, root, folders } = x;
  const rel = checkEntryPath(archive, header.name);
  const target = path.join(root, rel);
  if (rel === '') {
    if (header.type !== 'directory') throw unsafe(archive, header.name, 'names the install folder itself');
    body.resume();
    return;
  }
  await folders.parentsOf(rel, header.name);
  const mode = header.mode & 0o755;
  switch (header.type) {
    case 'directory': {
      // A folder made earlier as a parent gets its own entry's mode now, as GNU tar does.
      if (folders.has(rel)) await chmod(target, mode | 0o700);
      else await folders.ensure(rel, header.name, mode | 0o700);
      body.resume();
      return;
    }
    case 'file':
    case 'contiguous-file':
      await writeFileEntry(x, header, body, { target, mode });
      return;
    case 'symlink': {
      const linkname = header.linkname;
      if (!linkStaysInside(rel, linkname)) throw unsafe(archive, header.name, `symlink to "${linkname}" points outside the install folder`);
      await clearTarget(archive, header.name, target);
      await symlink(linkname, target);
      body.resume();
      return;
    }
    case 'link':
      await writeHardlink(x, header, target);
      body.resume();
      return;
    default:
      throw unsafe(archive, header.name, `${header.type} entries (devices, FIFOs) are not allowed`);
  }
}
