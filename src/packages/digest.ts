import { createHash, type Hash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { Transform, type TransformCallback } from 'node:stream';

export interface Digests {
  md5: string;
  sha256: string;
  size: number;
}

/** A pass-through that computes md5, sha256 and size of what flows through it. */
export class DigestStream extends Transform {
  private readonly md5: Hash = createHash('md5');
  private readonly sha256: Hash = createHash('sha256');
  private size = 0;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.md5.update(chunk);
    this.sha256.update(chunk);
    this.size += chunk.length;
    callback(null, chunk);
  }

  /** Only after the stream has ended. */
  digests(): Digests {
    return { md5: this.md5.digest('hex'), sha256: this.sha256.digest('hex'), size: this.size };
  }
}

/** A pass-through that computes one sha256. */
export class Sha256Stream extends Transform {
  private readonly hash: Hash = createHash('sha256');

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.hash.update(chunk);
    callback(null, chunk);
  }

  hex(): string {
    return this.hash.digest('hex');
  }
}

const DIGEST_READ_BYTES = 1024 * 1024;
/** Read buffers of finished digests: a fresh one per file would start the garbage collector for nothing. */
const spareBuffers: Buffer[] = [];

/**
 * md5, sha256 and size of a file, read into one buffer of 1 MB: a read stream's 64 KB
 * chunks cost sixteen times the reads and leave a buffer per chunk to the garbage collector.
 */
export async function digestFile(file: string): Promise<Digests> {
  const md5 = createHash('md5');
  const sha256 = createHash('sha256');
  let size = 0;
  const handle = await open(file, 'r');
  const buffer = spareBuffers.pop() ?? Buffer.allocUnsafe(DIGEST_READ_BYTES);
  try {
    for (;;) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
      if (bytesRead === 0) break;
      const chunk = buffer.subarray(0, bytesRead);
      md5.update(chunk);
      sha256.update(chunk);
      size += bytesRead;
    }
  } finally {
    spareBuffers.push(buffer);
    await handle.close();
  }
  return { md5: md5.digest('hex'), sha256: sha256.digest('hex'), size };
}
