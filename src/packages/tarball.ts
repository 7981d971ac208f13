import { createHash } from 'node:crypto';
import { closeSync, createWriteStream, openSync, writeSync } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import type { Compression } from '../config/index.js';
import { createCompressor } from './compress.js';
import type { CompressorPool } from './compressor-pool.js';
import { DigestStream, digestFile, type Digests } from './digest.js';
import { tarChunks } from './tar-writer.js';
import type { TreeEntry } from './tree.js';

export { TARBALL_MTIME } from './tar-writer.js';

export interface PackResult extends Digests {
  /** sha256 of the uncompressed tar stream: the package's content, whatever the compressor. */
  sourceDigest: string;
  tool: string;
}

/**
 * The source digest of `entries` (sha256 of their uncompressed tar stream) without writing
 * anything: reads every file once, compresses nothing.
 */
export async function digestEntries(entries: TreeEntry[]): Promise<string> {
  const hash = createHash('sha256');
  for (const chunk of tarChunks(entries)) {
    hash.update(chunk);
    // Between chunks, let the rest of the process (other packages, their pipes) run.
    await new Promise<void>((resolve) => { setImmediate(resolve); });
  }
  return hash.digest('hex');
}

async function syncFile(file: string): Promise<void> {
  const handle = await open(file, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export interface PackOptions {
  /** Caps a parallel compressor's threads. */
  threads?: number;
  /**
   * Compress through these long-lived helpers instead of a process of its own: the tar
   * stream goes to a file next to `dest` first. The same bytes come out either way.
   */
  pool?: CompressorPool;
}

/**
 * Packs `entries` into `dest` (created, never overwritten) with `compression`, computing the
 * tarball's digests and the source digest in the same pass: no byte is read twice. On any
 * failure `dest` is removed.
 */
export async function packEntries(entries: TreeEntry[], dest: string, compression: Compression, options: PackOptions = {}): Promise<PackResult> {
  if (options.pool) return packThroughPool(entries, dest, options.pool);
  const compressor = await createCompressor(compression, options);
  const source = createHash('sha256');
  const digest = new DigestStream();
  const writing = pipeline(compressor.output, digest, createWriteStream(dest, { flags: 'wx', mode: 0o644 }));
  const feeding = (async () => {
    const input = compressor.input;
    for (const chunk of tarChunks(entries)) {
      source.update(chunk);
      if (!input.write(chunk)) {
        // The compressor's own failure ends the wait too, through `done` or the output.
        await Promise.race([new Promise((resolve) => input.once('drain', resolve)), compressor.done, writing]);
      }
    }
    input.end();
  })();
  try {
    await Promise.all([feeding, writing, compressor.done]);
    await syncFile(dest);
  } catch (error) {
    compressor.input.destroy();
    await Promise.allSettled([feeding, writing, compressor.done]);
    await rm(dest, { force: true });
    throw error;
  }
  return { ...digest.digests(), sourceDigest: source.digest('hex'), tool: compressor.tool };
}

/**
 * The tar stream is written to `dest`.tar (hashed on the way), a helper compresses that file
 * into `dest`, which is then read once for its digests: for a small package, a few more
 * page-cache writes and reads cost far less than a process of its own.
 */
async function packThroughPool(entries: TreeEntry[], dest: string, pool: CompressorPool): Promise<PackResult> {
  const tar = `${dest}.tar`;
  const source = createHash('sha256');
  try {
    const fd = openSync(tar, 'wx', 0o600);
    try {
      for (const chunk of tarChunks(entries)) {
        source.update(chunk);
        for (let done = 0; done < chunk.length;) done += writeSync(fd, chunk, done);
        // Between chunks, let the other packages' answers in.
        await new Promise<void>((resolve) => { setImmediate(resolve); });
      }
    } finally {
      closeSync(fd);
    }
    await pool.compressFile(tar, dest);
    const digests = await digestFile(dest);
    await syncFile(dest);
    return { ...digests, sourceDigest: source.digest('hex'), tool: pool.tool };
  } catch (error) {
    await rm(dest, { force: true });
    throw error;
  } finally {
    await rm(tar, { force: true });
  }
}
