import { createReadStream } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar, { type Header, type Pack } from 'tar-stream';
import { AutotestError, describeError } from '../errors.js';
import type { Compression } from '../config/index.js';
import { createCompressor } from './compress.js';
import { DigestStream, Sha256Stream, type Digests } from './digest.js';
import type { TreeEntry } from './tree.js';

/** Every entry gets this mtime (2000-01-01), so the same tree gives the same bytes. */
export const TARBALL_MTIME = new Date('2000-01-01T00:00:00Z');

export interface PackResult extends Digests {
  /** sha256 of the uncompressed tar stream: the package's content, whatever the compressor. */
  sourceDigest: string;
  tool: string;
}

function headerFor(entry: TreeEntry): Partial<Header> & Pick<Header, 'name'> {
  const common = { name: entry.path, mode: entry.mode, mtime: TARBALL_MTIME, uid: 0, gid: 0, uname: 'root', gname: 'root' };
  switch (entry.kind) {
    case 'dir':
      return { ...common, type: 'directory' };
    case 'symlink':
      return { ...common, type: 'symlink', linkname: entry.linkTarget ?? '' };
    case 'file':
      return { ...common, type: 'file', size: entry.size };
  }
}

/** Writes the entries into a tar-stream packer, one after the other, then finalizes it. */
async function feed(pack: Pack, entries: TreeEntry[]): Promise<void> {
  for (const entry of entries) {
    if (entry.kind !== 'file') {
      await new Promise<void>((resolve, reject) => {
        pack.entry(headerFor(entry), (error) => {
          if (error) reject(error);
          else resolve();
        });
      });
      continue;
    }
    await new Promise<void>((resolve, reject) => {
      const sink = pack.entry(headerFor(entry), (error) => {
        if (error) {
          reject(new AutotestError('ERR_PACK', `${entry.absPath}: changed while being packed (${error.message})`, {
            hint: 'run the packager again once nothing writes to the client tree',
            cause: error,
          }));
        } else resolve();
      });
      const source = createReadStream(entry.absPath);
      source.on('error', (error) => {
        sink.destroy(error);
        reject(error);
      });
      source.pipe(sink);
    });
  }
  pack.finalize();
}

/**
 * The source digest of `entries` (sha256 of their uncompressed tar stream) without writing
 * anything: reads every file once, compresses nothing.
 */
export async function digestEntries(entries: TreeEntry[]): Promise<string> {
  const pack = tar.pack();
  const source = new Sha256Stream();
  const feeding = feed(pack, entries).catch((error: unknown) => {
    pack.destroy(error instanceof Error ? error : new Error(describeError(error)));
    throw error;
  });
  await Promise.all([feeding, pipeline(pack, source, new Writable({ write: (_chunk, _encoding, next) => { next(); } }))]);
  return source.hex();
}

/**
 * Packs `entries` into `dest` (created, never overwritten) with `compression`, computing the
 * tarball's digests and the source digest in the same pass: no byte is read twice. On any
 * failure `dest` is removed.
 */
export async function packEntries(entries: TreeEntry[], dest: string, compression: Compression): Promise<PackResult> {
  const pack = tar.pack();
  const source = new Sha256Stream();
  const compressor = await createCompressor(compression);
  const digest = new DigestStream();
  const feeding = feed(pack, entries).catch((error: unknown) => {
    pack.destroy(error instanceof Error ? error : new Error(describeError(error)));
    throw error;
  });
  try {
    await Promise.all([
      feeding,
      pipeline(pack, source, compressor.input),
      pipeline(compressor.output, digest, createWriteStream(dest, { flags: 'wx', mode: 0o644 })),
      compressor.done,
    ]);
    const handle = await open(dest, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch (error) {
    compressor.input.destroy();
    await rm(dest, { force: true });
    throw error;
  }
  return { ...digest.digests(), sourceDigest: source.hex(), tool: compressor.tool };
}
