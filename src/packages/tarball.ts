import { createHash } from 'node:crypto';
import { closeSync, createWriteStream, fchmodSync, openSync, writeSync } from 'node:fs';
import { rename, rm, unlink } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import type { Compression } from './compression.js';
import { AutotestError, errnoCode } from '../errors.js';
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
  for (const chunk of tarChunks(entries, { reuseBuffer: true })) {
    hash.update(chunk);
    // Between chunks, let the rest of the process (other packages, their pipes) run.
    await new Promise<void>((resolve) => {
      setImmediate(resolve);
    });
  }
  return hash.digest('hex');
}

export interface PackOptions {
  /** Caps a parallel compressor's threads. */
  threads?: number;
}

/**
 * Packs `entries` into `dest` (created, never overwritten) with `compression`, computing the
 * tarball's digests and the source digest in the same pass: no byte is read twice. On any
 * failure `dest` is removed. `dest` is not synced: it is a work file, and whoever publishes
 * it makes its own copy durable.
 */
export async function packEntries(entries: TreeEntry[], dest: string, compression: Compression, options: PackOptions = {}): Promise<PackResult> {
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
  } catch (error) {
    compressor.input.destroy();
    await Promise.allSettled([feeding, writing, compressor.done]);
    await rm(dest, { force: true });
    throw error;
  }
  return { ...digest.digests(), sourceDigest: source.digest('hex'), tool: compressor.tool };
}

/**
 * Writes the tar stream of `entries` into the new file `tar` (mode 0644, which the compressor
 * gives its output; the staging folder is the user's own) and returns its source digest,
 * hashed on the way: the first half of a pack through a compressor pool. One buffer is filled
 * and written again and again, in 1 MB writes; between them the event loop runs, so the
 * compressors waiting for their next file hear of it at once.
 */
export async function writeTarFile(entries: TreeEntry[], tar: string): Promise<string> {
  const source = createHash('sha256');
  // A file already there is not ours: refused, never removed.
  const fd = openSync(tar, 'wx', 0o644);
  try {
    try {
      // Whatever the umask: the compressor copies this mode to the tarball it writes.
      fchmodSync(fd, 0o644);
      for (const chunk of tarChunks(entries, { reuseBuffer: true })) {
        source.update(chunk);
        for (let done = 0; done < chunk.length;) done += writeSync(fd, chunk, done);
        await new Promise<void>((resolve) => {
          setImmediate(resolve);
        });
      }
    } finally {
      closeSync(fd);
    }
  } catch (error) {
    await rm(tar, { force: true });
    throw error;
  }
  return source.digest('hex');
}

/**
 * The second half: `pool` compresses the file `tar` of `bytes` (removed in any case); its
 * output, read once for its digests, is renamed `dest`. For a small package a few page-cache
 * writes and reads cost far less than a process of its own. The pool leaves nothing of a
 * failed output (and never touches a file it refused as already there); an output that
 * fails here is removed.
 */
export async function compressTarFile(tar: string, bytes: number, pool: CompressorPool, dest: string): Promise<Digests> {
  let output: string;
  try {
    output = await pool.compressFile(tar, bytes);
  } finally {
    await unlink(tar).catch(() => undefined);
  }
  try {
    const digests = await digestFile(output).catch((error: unknown) => {
      if (errnoCode(error) !== 'ENOENT') throw error;
      throw new AutotestError('ERR_TOOL', `${pool.tool} exited 0 but wrote no ${output}`, { hint: `check the ${pool.tool} found first on PATH`, cause: error });
    });
    await rename(output, dest);
    return digests;
  } catch (error) {
    await rm(output, { force: true });
    throw error;
  }
}
