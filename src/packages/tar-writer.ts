import { closeSync, openSync, readSync } from 'node:fs';
import { AutotestError } from '../errors.js';
import type { TreeEntry } from './tree.js';

/**
 * A tar stream written straight into large buffers: each header is encoded in place and each
 * file is read with plain read(2) calls into the buffer that goes to the compressor, so a
 * small file costs open, one read and close, and the compressor gets 1 MB writes. The bytes
 * are those tar-stream writes for the same headers (ustar, a name split over prefix and name,
 * a pax header for what ustar cannot hold), so source digests stay what they were.
 */

/** Every entry gets this mtime (2000-01-01), so the same tree gives the same bytes. */
export const TARBALL_MTIME = new Date('2000-01-01T00:00:00Z');
const MTIME_SECONDS = Math.floor(TARBALL_MTIME.getTime() / 1000);

/** The size of the buffers handed to the compressor. */
export const TAR_CHUNK_BYTES = 1024 * 1024;
const BLOCK = 512;

function octal(value: number, digits: number): string {
  const text = value.toString(8);
  if (text.length > digits) return `${'7'.repeat(digits)} `;
  return `${'0'.repeat(digits - text.length)}${text} `;
}

interface Header {
  name: string;
  mode: number;
  size: number;
  typeflag: number;
  linkname: string;
}

const TYPEFLAG = { file: 0, symlink: 2, dir: 5, pax: 72 } as const;

/** One ustar header block into `buf` at `at` (zeroed here), or false when ustar cannot hold it. */
function encodeUstar(header: Header, buf: Buffer, at: number): boolean {
  // Folder names go without a trailing slash, as tar-stream writes them (tar reads the type).
  let name = header.name;
  if (Buffer.byteLength(name) !== name.length) return false;
  let prefix = '';
  while (name.length > 100) {
    const slash = name.indexOf('/');
    if (slash === -1) return false;
    prefix += prefix ? `/${name.slice(0, slash)}` : name.slice(0, slash);
    name = name.slice(slash + 1);
  }
  if (prefix.length > 155 || Buffer.byteLength(header.linkname) > 100) return false;
  buf.fill(0, at, at + BLOCK);
  buf.write(name, at, 'utf8');
  buf.write(octal(header.mode & 0o7777, 6), at + 100, 'latin1');
  buf.write(octal(0, 6), at + 108, 'latin1');
  buf.write(octal(0, 6), at + 116, 'latin1');
  if (header.size.toString(8).length > 11) {
    buf[at + 124] = 0x80;
    let size = header.size;
    for (let i = 11; i > 0; i -= 1) {
      buf[at + 124 + i] = size & 0xff;
      size = Math.floor(size / 0x100);
    }
  } else buf.write(octal(header.size, 11), at + 124, 'latin1');
  buf.write(octal(MTIME_SECONDS, 11), at + 136, 'latin1');
  buf[at + 156] = 0x30 + header.typeflag;
  if (header.linkname) buf.write(header.linkname, at + 157, 'utf8');
  buf.write('ustar\u000000', at + 257, 'latin1');
  buf.write('root', at + 265, 'latin1');
  buf.write('root', at + 297, 'latin1');
  buf.write(octal(0, 6), at + 329, 'latin1');
  buf.write(octal(0, 6), at + 337, 'latin1');
  if (prefix) buf.write(prefix, at + 345, 'utf8');
  let sum = 8 * 32;
  for (let i = at; i < at + 148; i += 1) sum += buf[i] ?? 0;
  for (let i = at + 156; i < at + BLOCK; i += 1) sum += buf[i] ?? 0;
  buf.write(octal(sum, 6), at + 148, 'latin1');
  return true;
}

/** A pax record: its length counts its own digits. */
function paxRecord(text: string): string {
  const length = Buffer.byteLength(text);
  let digits = Math.floor(Math.log10(length)) + 1;
  if (length + digits >= Math.pow(10, digits)) digits += 1;
  return `${length + digits}${text}`;
}

const padding = (size: number): number => (BLOCK - (size % BLOCK)) % BLOCK;

function headerOf(entry: TreeEntry): Header {
  switch (entry.kind) {
    case 'dir':
      return { name: entry.path, mode: entry.mode, size: 0, typeflag: TYPEFLAG.dir, linkname: '' };
    case 'symlink':
      return { name: entry.path, mode: entry.mode, size: 0, typeflag: TYPEFLAG.symlink, linkname: entry.linkTarget ?? '' };
    case 'file':
      return { name: entry.path, mode: entry.mode, size: entry.size, typeflag: TYPEFLAG.file, linkname: '' };
  }
}

/** The header blocks of `entry`: one ustar block, or a pax header, its records and a ustar block. */
function headerBlocks(entry: TreeEntry): Buffer {
  const header = headerOf(entry);
  const single = Buffer.allocUnsafe(BLOCK);
  if (encodeUstar(header, single, 0)) return single;
  const records = Buffer.from(paxRecord(` path=${header.name}\n`) + (header.linkname ? paxRecord(` linkpath=${header.linkname}\n`) : ''));
  const blocks = Buffer.alloc(BLOCK + records.length + padding(records.length) + BLOCK);
  const linkname = header.linkname ? 'PaxHeader' : '';
  encodeUstar({ name: 'PaxHeader', mode: header.mode, size: records.length, typeflag: TYPEFLAG.pax, linkname }, blocks, 0);
  records.copy(blocks, BLOCK);
  encodeUstar({ ...header, name: 'PaxHeader', linkname }, blocks, blocks.length - BLOCK);
  return blocks;
}

function changed(entry: TreeEntry, why: string): AutotestError {
  return new AutotestError('ERR_PACK', `${entry.absPath}: changed while being packed (${why})`, {
    hint: 'run the packager again once nothing writes to the client tree',
  });
}

/**
 * The tar stream of `entries` (in their order, then the two zero blocks that end it), as
 * buffers of `chunkBytes` (the last one shorter). Files are read synchronously: they are
 * read once, in order, into the buffer that leaves next, and a thread-pool round trip per
 * read would cost more than the read. A file whose size differs from its entry's is an error.
 * With `reuseBuffer`, every chunk is the same buffer, refilled once the caller asks for the
 * next: for a caller done with each chunk by then, no buffer is left for the garbage collector.
 */
export function* tarChunks(entries: Iterable<TreeEntry>, options: { chunkBytes?: number; reuseBuffer?: boolean } = {}): Generator<Buffer, void, undefined> {
  const chunkBytes = options.chunkBytes ?? TAR_CHUNK_BYTES;
  const reused = options.reuseBuffer === true ? takeSpareBuffer(chunkBytes) : undefined;
  try {
    yield* tarChunksInto(entries, reused, chunkBytes);
  } finally {
    if (reused) spareBuffers.push(reused);
  }
}

/**
 * Buffers of finished reusing walks, for the next: a fresh 1 MB buffer per package counts
 * as external memory, and a hundred of them start the garbage collector for nothing.
 */
const spareBuffers: Buffer[] = [];

function takeSpareBuffer(bytes: number): Buffer {
  const spare = spareBuffers.pop();
  return spare !== undefined && spare.length === bytes ? spare : Buffer.allocUnsafe(bytes);
}

function* tarChunksInto(entries: Iterable<TreeEntry>, reused: Buffer | undefined, chunkBytes: number): Generator<Buffer, void, undefined> {
  let buf = reused ?? Buffer.allocUnsafe(chunkBytes);
  let used = 0;
  const probe = Buffer.allocUnsafe(1);
  /** Hands out the buffer once it is full, and starts the next. */
  function* handOutIfFull(): Generator<Buffer, void, undefined> {
    if (used < buf.length) return;
    yield buf;
    if (!reused) buf = Buffer.allocUnsafe(chunkBytes);
    used = 0;
  }
  /** Copies `bytes` in, handing out every buffer that fills. */
  function* put(bytes: Buffer): Generator<Buffer, void, undefined> {
    let from = 0;
    while (from < bytes.length) {
      const n = bytes.copy(buf, used, from);
      used += n;
      from += n;
      yield* handOutIfFull();
    }
  }
  function* zeros(count: number): Generator<Buffer, void, undefined> {
    let left = count;
    while (left > 0) {
      const n = Math.min(left, buf.length - used);
      buf.fill(0, used, used + n);
      used += n;
      left -= n;
      yield* handOutIfFull();
    }
  }
  for (const entry of entries) {
    if (buf.length - used >= BLOCK && encodeUstar(headerOf(entry), buf, used)) {
      used += BLOCK;
      yield* handOutIfFull();
    } else yield* put(headerBlocks(entry));
    if (entry.kind !== 'file') continue;
    const fd = openSync(entry.absPath, 'r');
    try {
      let left = entry.size;
      let endSeen = false;
      while (left > 0) {
        // With room for one byte more than is left, the same read also tells a file that grew.
        const want = Math.min(left + 1, buf.length - used);
        const n = readSync(fd, buf, used, want, null);
        if (n === 0) throw changed(entry, `${entry.size - left} bytes where ${entry.size} were expected`);
        if (n > left) throw changed(entry, `more than the ${entry.size} bytes expected`);
        endSeen = want > left && n === left;
        used += n;
        left -= n;
        yield* handOutIfFull();
      }
      if (!endSeen && readSync(fd, probe, 0, 1, null) !== 0) throw changed(entry, `more than the ${entry.size} bytes expected`);
    } finally {
      closeSync(fd);
    }
    yield* zeros(padding(entry.size));
  }
  yield* zeros(2 * BLOCK);
  if (used > 0) yield buf.subarray(0, used);
}
