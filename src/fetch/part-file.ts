import { createReadStream } from 'node:fs';
import { open, readFile, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import type { IndexEntry } from '../packages/index.js';
import type { Digester } from './hashing.js';

/**
 * A download in the package cache before it is verified: DEST.part holds the bytes received
 * so far, in order, and DEST.part.json says which package they are of, so that a later run
 * resumes only a download of these very bytes.
 */
export class PartFile {
  readonly path: string;
  private readonly infoPath: string;
  private readonly identity: string;

  constructor(
    private readonly dest: string,
    private readonly entry: IndexEntry,
  ) {
    this.path = `${dest}.part`;
    this.infoPath = `${dest}.part.json`;
    this.identity = JSON.stringify({ md5: entry.md5, sha256: entry.sha256 ?? null, size: entry.size ?? null });
  }

  /** Where to resume: the bytes kept from a download of the same package, else 0 (the part is started afresh). */
  async resumePoint(): Promise<number> {
    let offset = 0;
    if ((await readFile(this.infoPath, 'utf8').catch(() => '')) === this.identity) offset = (await stat(this.path).catch(() => undefined))?.size ?? 0;
    else {
      await rm(this.path, { force: true });
      await writeFile(this.infoPath, this.identity);
    }
    await writeFile(this.path, '', { flag: 'a', mode: 0o644 });
    return this.entry.size !== undefined && offset > this.entry.size ? 0 : offset;
  }

  /** Feeds the first `bytes` kept to `hash`, so the digest goes on from the resume point. */
  async hashKept(bytes: number, hash: Digester): Promise<void> {
    if (bytes === 0) return;
    for await (const chunk of createReadStream(this.path, { end: bytes - 1 })) hash.update(chunk as Buffer);
  }

  openForWriting(): Promise<FileHandle> {
    return open(this.path, 'r+');
  }

  /** Drops the bytes, keeping which package they were of. */
  async discard(): Promise<void> {
    await rm(this.path, { force: true });
  }

  /** Drops every trace of the download. */
  async discardAll(): Promise<void> {
    await Promise.all([rm(this.path, { force: true }), rm(this.infoPath, { force: true })]);
  }

  /**
   * Gives the verified bytes their name. No fsync: a cached tarball is verified again before
   * every later use, so one that a crash left damaged is fetched again, never used.
   */
  async publish(): Promise<void> {
    await rename(this.path, this.dest);
    await rm(this.infoPath, { force: true });
  }
}
