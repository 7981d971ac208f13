import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
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

/** md5, sha256 and size of a file, read as a stream. */
export async function digestFile(file: string): Promise<Digests> {
  const md5 = createHash('md5');
  const sha256 = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(file)) {
    const buffer = chunk as Buffer;
    md5.update(buffer);
    sha256.update(buffer);
    size += buffer.length;
  }
  return { md5: md5.digest('hex'), sha256: sha256.digest('hex'), size };
}
