import type { Digests } from '../../packages/index.js';

/** A small text object (the index files) as read, with the ETag a conditional write names. */
export interface StoredText {
  text: string;
  etag: string;
}

export interface StoredObject {
  size: number;
  etag: string;
  mtimeMs: number;
}

/** A local file to upload, with its size (which decides how it goes up). */
export interface UploadSource {
  path: string;
  size: number;
}

/**
 * What the index protocol needs of an object store with conditional writes, as S3 has them.
 * Names are relative to the location's prefix; ETags are bare (no quotes, no W/). Every
 * failure other than "not there" (undefined) or "changed meanwhile" (false) is thrown as an
 * AutotestError naming the location.
 */
export interface ConditionalStore {
  /** How to name the location in messages (never with a secret). */
  readonly name: string;
  /** Replacements larger than this cannot be copied server-side into place. */
  readonly copyLimitBytes: number;
  /** Uploads larger than this may ignore If-None-Match (radosgw 16 on a multipart completion). */
  readonly conditionalUploadLimitBytes: number;
  getText(file: string): Promise<StoredText | undefined>;
  head(file: string): Promise<StoredObject | undefined>;
  /**
   * Writes a small text object only if it still has `etag` (If-Match), or only if there is
   * none when `etag` is undefined (If-None-Match: *): false when the condition failed (a 412).
   */
  putTextIf(file: string, text: string, etag: string | undefined): Promise<boolean>;
  /**
   * Uploads a file's bytes to `file` and checks the ETag the store gives them; with
   * `onlyIfNew` (If-None-Match: *), undefined when an object is already there. Returns the
   * ETags these bytes may have on the store (one per way of uploading them).
   */
  upload(source: UploadSource, file: string, onlyIfNew: boolean): Promise<string[] | undefined>;
  /** Copies `from` over `to` server-side, unconditionally; the ETag of the copy when the store says it. */
  copy(from: string, to: string): Promise<string | undefined>;
  /** Deletes unconditionally (S3 servers without conditional deletes); a missing object is no error. */
  delete(file: string): Promise<void>;
  /** Every object directly under the prefix. */
  list(): Promise<Map<string, StoredObject>>;
  /** Streams an object's digests; ERR_NOT_FOUND when it is missing. */
  digest(file: string): Promise<Digests & { etag: string }>;
  /** Aborts uploads a dead packager started and never completed; returns their names. */
  abortDeadUploads(): Promise<string[]>;
}
