/** SSH wire encoding (RFC 4251): uint32 big-endian lengths before every string. */

export function sshString(data: Buffer | string): Buffer {
  const body = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  const length = Buffer.alloc(4);
  length.writeUInt32BE(body.length);
  return Buffer.concat([length, body]);
}

export function sshUint32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32BE(value);
  return buffer;
}

/** A read past the end of SSH wire data: an internal error the callers wrap with what was read. */
export class TruncatedWire extends Error {
  constructor() {
    super('truncated or damaged');
    this.name = 'TruncatedWire';
  }
}

/** Reads SSH wire fields in order; any read past the end throws TruncatedWire. */
export class WireReader {
  private offset = 0;

  constructor(private readonly buffer: Buffer) {}

  uint32(): number {
    if (this.offset + 4 > this.buffer.length) throw new TruncatedWire();
    const value = this.buffer.readUInt32BE(this.offset);
    this.offset += 4;
    return value;
  }

  bytes(length: number): Buffer {
    if (this.offset + length > this.buffer.length) throw new TruncatedWire();
    const value = this.buffer.subarray(this.offset, this.offset + length);
    this.offset += length;
    return value;
  }

  string(): Buffer {
    return this.bytes(this.uint32());
  }

  text(): string {
    return this.string().toString('utf8');
  }

  get done(): boolean {
    return this.offset === this.buffer.length;
  }
}

export const ED25519 = 'ssh-ed25519';

/** The public key blob of an ed25519 key: string "ssh-ed25519", string key (32 bytes). */
export function ed25519Blob(publicKey: Buffer): Buffer {
  return Buffer.concat([sshString(ED25519), sshString(publicKey)]);
}

/** The 32 raw bytes of an ed25519 public key blob, or undefined for any other key type. */
export function ed25519FromBlob(blob: Buffer): Buffer | undefined {
  try {
    const reader = new WireReader(blob);
    if (reader.text() !== ED25519) return undefined;
    const key = reader.string();
    return key.length === 32 && reader.done ? key : undefined;
  } catch {
    return undefined;
  }
}
