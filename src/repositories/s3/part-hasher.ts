import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';

/**
 * md5 of each part-sized slice of what flows through, as lib-storage cuts the stream, so the
 * ETag S3 gives the object can be checked against the bytes sent: md5 of the whole for a
 * single PUT, md5 of the part md5s with "-N" for a multipart upload.
 */
export class PartHasher extends Transform {
  private readonly whole: Hash = createHash('md5');
  private part: Hash = createHash('md5');
  private inPart = 0;
  private readonly partDigests: Buffer[] = [];

  constructor(private readonly partSize: number) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.whole.update(chunk);
    let offset = 0;
    while (offset < chunk.length) {
      const take = Math.min(this.partSize - this.inPart, chunk.length - offset);
      this.part.update(chunk.subarray(offset, offset + take));
      this.inPart += take;
      offset += take;
      if (this.inPart === this.partSize) {
        this.partDigests.push(this.part.digest());
        this.part = createHash('md5');
        this.inPart = 0;
      }
    }
    callback(null, chunk);
  }

  /** The ETags this content may have on S3; only after the stream has ended. */
  etags(): string[] {
    const parts = [...this.partDigests];
    if (this.inPart > 0) parts.push(this.part.digest());
    const multipart = `${createHash('md5').update(Buffer.concat(parts)).digest('hex')}-${parts.length.toString()}`;
    return [this.whole.digest('hex'), multipart];
  }
}
