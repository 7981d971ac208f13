import { createHash } from 'node:crypto';
import type { ConditionalStore, StoredObject, StoredText, UploadSource } from '../src/repositories/s3/conditional-store.js';
import { AutotestError } from '../src/errors.js';
import type { Digests } from '../src/packages/index.js';

interface MemoryObject {
  bytes: Buffer;
  etag: string;
  mtimeMs: number;
}

export function digestsOf(bytes: Buffer): Digests {
  return {
    md5: createHash('md5').update(bytes).digest('hex'),
    sha256: createHash('sha256').update(bytes).digest('hex'),
    size: bytes.length,
  };
}

/**
 * A bucket prefix in memory that honours If-Match and If-None-Match on PUT as S3 does (a 412,
 * here false, when the condition fails; If-Match on a missing object fails too, as on
 * radosgw), and like S3 has no conditional copy or delete. Every write gives the object a new
 * ETag, so no test passes by two writes happening to look alike. Uploads read their bytes
 * from `sources` (by UploadSource.path); time is a counter, one tick per write.
 */
export class MemoryStore implements ConditionalStore {
  readonly name = 's3://memory/prefix';
  readonly copyLimitBytes = 5 * 1024 ** 3;
  readonly conditionalUploadLimitBytes = Number.POSITIVE_INFINITY;
  readonly objects = new Map<string, MemoryObject>();
  readonly sources = new Map<string, Buffer>();
  private writes = 0;

  private write(file: string, bytes: Buffer): string {
    this.writes += 1;
    const etag = `${createHash('md5').update(bytes).digest('hex').slice(0, 16)}w${this.writes.toString()}`;
    this.objects.set(file, { bytes, etag, mtimeMs: this.writes });
    return etag;
  }

  private headNow(file: string): StoredObject | undefined {
    const object = this.objects.get(file);
    return object && { size: object.bytes.length, etag: object.etag, mtimeMs: object.mtimeMs };
  }

  getText(file: string): Promise<StoredText | undefined> {
    const object = this.objects.get(file);
    return Promise.resolve(object && { text: object.bytes.toString('utf8'), etag: object.etag });
  }

  head(file: string): Promise<StoredObject | undefined> {
    return Promise.resolve(this.headNow(file));
  }

  putTextIf(file: string, text: string, etag: string | undefined): Promise<boolean> {
    const current = this.objects.get(file);
    if (etag === undefined ? current !== undefined : current?.etag !== etag) return Promise.resolve(false);
    this.write(file, Buffer.from(text, 'utf8'));
    return Promise.resolve(true);
  }

  upload(source: UploadSource, file: string, onlyIfNew: boolean): Promise<string[] | undefined> {
    const bytes = this.sources.get(source.path);
    if (!bytes) return Promise.reject(new Error(`no source ${source.path} registered`));
    if (onlyIfNew && this.objects.has(file)) return Promise.resolve(undefined);
    return Promise.resolve([this.write(file, bytes)]);
  }

  copy(from: string, to: string): Promise<string | undefined> {
    const object = this.objects.get(from);
    if (!object)
      return Promise.reject(new AutotestError('ERR_LOCATION_REFUSED', `S3 location ${this.name}: moving ${to} into place: not found (NoSuchKey, 404)`));
    return Promise.resolve(this.write(to, object.bytes));
  }

  delete(file: string): Promise<void> {
    this.objects.delete(file);
    return Promise.resolve();
  }

  list(): Promise<Map<string, StoredObject>> {
    const listing = new Map<string, StoredObject>();
    for (const file of [...this.objects.keys()].sort()) listing.set(file, this.headNow(file) ?? { size: 0, etag: '', mtimeMs: 0 });
    return Promise.resolve(listing);
  }

  digest(file: string): Promise<Digests & { etag: string }> {
    const object = this.objects.get(file);
    if (!object) return Promise.reject(new AutotestError('ERR_NOT_FOUND', `${this.name}: ${file} is missing`));
    return Promise.resolve({ ...digestsOf(object.bytes), etag: object.etag });
  }

  abortDeadUploads(): Promise<string[]> {
    return Promise.resolve([]);
  }
}

/** Passes each call of one packager on to the store only when the interleaving lets it through. */
export function gatedStore(store: MemoryStore, gate: (what: string) => Promise<void>): ConditionalStore {
  const through = async <T>(what: string, call: () => Promise<T>): Promise<T> => {
    await gate(what);
    return call();
  };
  return {
    name: store.name,
    copyLimitBytes: store.copyLimitBytes,
    conditionalUploadLimitBytes: store.conditionalUploadLimitBytes,
    getText: (file) => through(`get ${file}`, () => store.getText(file)),
    head: (file) => through(`head ${file}`, () => store.head(file)),
    putTextIf: (file, text, etag) => through(`put ${file} if ${etag ?? 'none'}`, () => store.putTextIf(file, text, etag)),
    upload: (source, file, onlyIfNew) => through(`upload ${file}${onlyIfNew ? ' if new' : ''}`, () => store.upload(source, file, onlyIfNew)),
    copy: (from, to) => through(`copy ${from} to ${to}`, () => store.copy(from, to)),
    delete: (file) => through(`delete ${file}`, () => store.delete(file)),
    list: () => through('list', () => store.list()),
    digest: (file) => through(`digest ${file}`, () => store.digest(file)),
    abortDeadUploads: () => through('abort dead uploads', () => store.abortDeadUploads()),
  };
}
