import type { Readable } from 'node:stream';
import type { Location } from '../config/index.js';
import type { IndexEntry, RepositoryIndex } from '../packages/index.js';
import type { IndexTrust } from '../signing/index.js';

/** A file copied into a location under a temporary name, waiting for its commit. */
export interface StagedFile {
  file: string;
  tempPath: string;
}

export interface IndexChange {
  add: { entry: IndexEntry; staged: StagedFile }[];
  /** Also index entries whose file is already in place and right (legacy entries refreshed). */
  refresh: IndexEntry[];
  remove: string[];
}

/** A place the packager writes to. One implementation per scheme. */
export interface UploadTarget {
  location: Location;
  /** How to name it in messages (never with a secret). */
  name: string;
  /** Creates the folder if needed; refuses when unwritable or short of space. Writes nothing that stays. */
  prepare(options: { minimumFreeBytes: number; neededBytes: number }): Promise<{ created: boolean }>;
  readIndex(): Promise<RepositoryIndex>;
  /** Size of a published file, or undefined when it is not there. */
  fileSize(file: string): Promise<number | undefined>;
  /** Copies `source` in under a temp name (or links it: never write to `source` afterwards). */
  stage(file: string, source: string): Promise<StagedFile>;
  /** Renames staged files into place and updates the index, under the location's lock. */
  commit(change: IndexChange): Promise<void>;
  /** Deletes staged files that will not be committed. */
  discard(staged: StagedFile[]): Promise<void>;
  /** Every file name in the location (index files and temps included). */
  listFiles(): Promise<string[]>;
  /** Streams a published file's digests. */
  digestFile(file: string): Promise<{ md5: string; sha256: string; size: number }>;
  /** Removes temp files of dead writers; returns their names. */
  cleanTemps(): Promise<string[]>;
  /** Drops files that are still missing or corrupt when checked under the lock, with their index entries; returns those dropped. */
  purge(files: string[]): Promise<string[]>;
  /** Deletes packages (and plain files) last modified before `olderThanMs` (epoch ms), index first; returns their names. */
  expire(olderThanMs: number): Promise<string[]>;
  /**
   * Writes the index again under the lock with a new serial (and expiry), signed when the
   * target has a signing key: after a key rotation, or to renew index_valid_days. Returns the new serial.
   */
  sign(): Promise<number>;
  /** The manifest and its signature as they are now, signature read first (undefined: none). */
  readSignedPair(): Promise<{ manifest: string | undefined; signature: string | undefined }>;
}

/** The bytes of a package from `start` on (a server that ignores ranges starts at 0). */
export interface Opened {
  stream: Readable;
  start: number;
}

/** The read side of a repository, as clients and the caching front use it: one implementation per scheme (SCHEME/read.ts). */
export interface FetchRepository {
  /** For messages: the location without secrets. */
  name: string;
  /** The index; with `trust`, only a manifest whose signature verifies is believed (see readVerifiedIndex). */
  readIndex(trust?: IndexTrust): Promise<RepositoryIndex>;
  /** The bytes of `file` from `offset` on, all of them within `timeoutMs` (what is left of fetch_timeout). */
  open(file: string, offset: number, timeoutMs: number): Promise<Opened>;
  /**
   * `file` whole with its ETag, or `unchanged` when `etag` is still its ETag (If-None-Match, a
   * 304): how the caching front revalidates an index. Only schemes with ETags (HTTP, S3) have it.
   */
  readIfChanged?(file: string, etag: string | undefined, timeoutMs: number): Promise<Revalidated>;
}

export type Revalidated = { unchanged: true } | { unchanged: false; stream: Readable; etag: string | undefined };
