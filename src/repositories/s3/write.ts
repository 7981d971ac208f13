import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { Transform, Writable, type Readable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream';
import { pipeline as pipelinePromise } from 'node:stream/promises';
import {
  AbortMultipartUploadCommand,
  CopyObjectCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import pLimit from 'p-limit';
import type { S3Location } from '../../config/index.js';
import { AutotestError } from '../../errors.js';
import { isDeadTemp, isTempName, tempPathFor } from '../../fs/atomic.js';
import {
  CHECKSUM_FILE,
  DigestStream,
  MANIFEST_FILE,
  formatChecksumFile,
  formatManifest,
  matchesEntry,
  mergeIndex,
  SIGNATURE_FILE,
  parseChecksumFile,
  parseManifestDocument,
  type Digests,
  type IndexEntry,
  type ManifestHeader,
  type RepositoryIndex,
} from '../../packages/index.js';
import { s3Client, s3Key, s3Problem, type S3Problem } from './client.js';
import { SIGNATURE_NAMESPACE, nextManifestHeader, signManifest, signerOf, verifySshsig } from '../../signing/index.js';
import { isHousekeepingName, type FileInfo, type TargetOptions } from '../store.js';
import type { IndexChange, StagedFile, UploadTarget } from '../types.js';

/** A multipart upload nobody completed for this long was left by a dead packager. */
const DEAD_UPLOAD_MS = 24 * 3600 * 1000;
/** Tries of one read-modify-write of the index before giving up (each after a random pause). */
const INDEX_TRIES = 40;
/** CopyObject's limit: larger replacements would need a multipart copy. */
const COPY_LIMIT_BYTES = 5 * 1024 ** 3;
const INDEX_CACHE_CONTROL = 'no-cache';

interface Text {
  text: string;
  etag: string;
}

interface Head {
  size: number;
  etag: string;
  mtimeMs: number;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** An ETag without quotes or weakness mark, as compared. */
function bareEtag(etag: string | undefined): string {
  return (etag ?? '').replace(/^W\//, '').replace(/^"|"$/g, '');
}

/**
 * md5 of each part-sized slice of what flows through, as lib-storage cuts the stream, so the
 * ETag S3 gives the object can be checked against the bytes sent: md5 of the whole for a
 * single PUT, md5 of the part md5s with "-N" for a multipart upload.
 */
class PartHasher extends Transform {
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

const DEFAULT_HINT = 'check the [S3] section (endpoint, region, path_style) and the credentials; the index stays consistent, so running the command again finishes the work';

function refused(name: string, what: string, problem: S3Problem | string, cause?: unknown, hint?: string): AutotestError {
  const why = typeof problem === 'string' ? problem : problem.why;
  return new AutotestError('ERR_LOCATION_REFUSED', `S3 location ${name}: ${what}: ${why}`, {
    hint: hint ?? (typeof problem !== 'string' && problem.kind === 'noBucket'
      ? 'create the bucket first (aws s3 mb, radosgw-admin or the console) or fix the location'
      : DEFAULT_HINT),
    cause,
  });
}

/** Conditional writes checked on an endpoint and prefix in this process: whether a bare (unquoted) If-Match is honoured too. */
const casChecked = new Map<string, { bareIfMatch: boolean }>();

/**
 * An S3 prefix as a repository. S3 has no lock, so the index is kept with conditional writes
 * instead (optimistic concurrency, see the README): packages.json is replaced only with
 * If-Match on the ETag it was read with (If-None-Match: * when new) and re-read and re-applied
 * on 412; packages.checksum follows it, derived from the manifest under the same rule. New
 * packages go straight to their key (If-None-Match: *); a replacement goes to a temp key
 * first and is copied over its old version server-side once its index entry is gone. Copies
 * and deletes cannot be conditional on radosgw 16, so two packagers writing the same file at
 * the same moment can leave, for a moment, an entry naming the other's bytes (see commit);
 * fetchers verify every byte, and the last writer leaves the index right.
 */
export async function createS3Target(location: S3Location, options: TargetOptions = {}): Promise<UploadTarget> {
  const { signing } = options;
  const name = location.text;
  const { bucket } = location;
  const client: S3Client = await s3Client(location.settings, options.resources);
  const key = (file: string): string => s3Key(location, file);
  const listPrefix = location.prefix === '' ? '' : `${location.prefix}/`;
  /** ETag of each staged object, as S3 should report it. */
  const stagedEtags = new Map<string, string[]>();
  const casId = `${location.settings.endpoint ?? 'aws'} ${bucket} ${location.prefix}`;
  /** The index as last read: a file it lists is replaced through a temp key, the others go straight to their key. */
  let indexRead: RepositoryIndex | undefined;
  /** radosgw 16 compares If-Match with the bare ETag; AWS with the quoted one. */
  let quoteEtags = true;

  const call = async <T>(what: string, work: () => Promise<T>): Promise<T> => {
    try {
      return await work();
    } catch (error) {
      if (error instanceof AutotestError) throw error;
      throw refused(name, what, s3Problem(error), error);
    }
  };

  const head = async (file: string): Promise<Head | undefined> => {
    try {
      const answer = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key(file) }));
      return { size: answer.ContentLength ?? 0, etag: bareEtag(answer.ETag), mtimeMs: answer.LastModified?.getTime() ?? 0 };
    } catch (error) {
      const problem = s3Problem(error);
      if (problem.kind === 'notFound') return undefined;
      throw refused(name, `reading ${file}`, problem, error);
    }
  };

  const getText = async (file: string): Promise<Text | undefined> => {
    try {
      const answer = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key(file) }));
      const text = await answer.Body?.transformToString('utf8') ?? '';
      return { text, etag: bareEtag(answer.ETag) };
    } catch (error) {
      const problem = s3Problem(error);
      if (problem.kind === 'notFound') return undefined;
      throw refused(name, `reading ${file}`, problem, error);
    }
  };

  /** A conditional PUT: false when the object changed since `etag` was read (or exists, for a new one). */
  const putIf = async (file: string, text: string, etag: string | undefined): Promise<boolean> => {
    // Every index write relies on conditions: checked once per process, whatever the command.
    await checkConditionalWrites();
    const send = (quoted: boolean): Promise<unknown> => client.send(new PutObjectCommand({
      // An empty index has no length the SDK can see: without the header it warns and sends chunked.
      Bucket: bucket, Key: key(file), Body: text, ContentLength: Buffer.byteLength(text), ContentType: file.endsWith('.json') ? 'application/json' : 'text/plain; charset=utf-8',
      CacheControl: INDEX_CACHE_CONTROL,
      ...(etag === undefined ? { IfNoneMatch: '*' } : { IfMatch: quoted ? `"${etag}"` : etag }),
    }));
    try {
      await send(quoteEtags);
      return true;
    } catch (error) {
      const problem = s3Problem(error);
      if (problem.kind !== 'precondition') throw refused(name, `writing ${file}`, problem, error);
      if (etag === undefined) return false;
      // A 412 for an object that still has the ETag asked for: this server wants it written
      // the other way (quoted or bare). Learnt once, then every write uses it; only a form the
      // probe showed to be honoured is ever used.
      if ((await head(file))?.etag !== etag) return false;
      if (quoteEtags && casChecked.get(casId)?.bareIfMatch !== true) {
        throw refused(name, `writing ${file}`, 'the server refuses If-Match with the current ETag quoted and does not honour it bare', undefined,
          'this S3 server cannot keep an index safe for concurrent packagers; use another server or endpoint');
      }
      try {
        await send(!quoteEtags);
        quoteEtags = !quoteEtags;
        return true;
      } catch (second) {
        const again = s3Problem(second);
        if (again.kind === 'precondition') return false;
        throw refused(name, `writing ${file}`, again, second);
      }
    }
  };

  /** The index as the manifest says (the manifest is the truth here; packages.checksum follows it). */
  const readIndexWithTag = async (): Promise<{ index: RepositoryIndex; etag: string | undefined; header: ManifestHeader | undefined }> => {
    const [manifest, checksums] = await Promise.all([getText(MANIFEST_FILE), getText(CHECKSUM_FILE)]);
    if (manifest) return { ...parseManifestDocument(manifest.text, `${name}/${MANIFEST_FILE}`), etag: manifest.etag };
    // A prefix filled by Autotest's packager (copied up with aws s3 sync): md5s only.
    const legacy = checksums === undefined ? undefined : parseChecksumFile(checksums.text, `${name}/${CHECKSUM_FILE}`);
    return { index: mergeIndex(legacy, undefined), etag: undefined, header: undefined };
  };

  /**
   * Without signing_key: a signature that no longer signs the manifest (by the key it names)
   * is left over from before signing_key was turned off, and would make every trusting client
   * take the prefix for forged; it goes, only while it is still the object looked at. One
   * that signs the manifest is another packager's of this prefix, and stays.
   */
  const removeStaleSignature = async (): Promise<void> => {
    const current = await getText(SIGNATURE_FILE);
    if (!current) return;
    const manifest = await getText(MANIFEST_FILE);
    const signer = signerOf(current.text);
    if (manifest && signer && verifySshsig(current.text, Buffer.from(manifest.text, 'utf8'), SIGNATURE_NAMESPACE, [signer]).valid) return;
    await removeIfUnchanged(SIGNATURE_FILE, current.etag);
  };

  /**
   * packages.json.sig made to sign the manifest, under the same conditional rule as
   * packages.checksum: the signature is read before the manifest it is made from, so a
   * signature written never signs an older manifest than the one it replaces signed.
   */
  const syncSignature = async (): Promise<void> => {
    if (!signing) {
      await removeStaleSignature();
      return;
    }
    for (let attempt = 0; attempt < INDEX_TRIES; attempt++) {
      const current = await getText(SIGNATURE_FILE);
      const manifest = await getText(MANIFEST_FILE);
      if (!manifest) return;
      if (current && verifySshsig(current.text, Buffer.from(manifest.text, 'utf8'), SIGNATURE_NAMESPACE, [signing.key.publicBlob]).valid) return;
      if (await putIf(SIGNATURE_FILE, await signManifest(manifest.text, signing.key), current?.etag)) return;
      await sleep(Math.random() * 20 * (attempt + 1));
    }
    throw new AutotestError('ERR_LOCK', `upload location ${name}: ${SIGNATURE_FILE} kept changing under ${INDEX_TRIES.toString()} tries`, {
      hint: 'many packagers are writing this prefix at once; run the upload again',
    });
  };

  /** packages.checksum made to match the manifest; each writer leaves it at least as new as the manifest it saw. */
  const syncChecksum = async (): Promise<void> => {
    for (let attempt = 0; attempt < INDEX_TRIES; attempt++) {
      // The checksum file first, then the manifest: what is written derives from a manifest
      // read after the version it replaces, so packages.checksum never goes back in time.
      const checksums = await getText(CHECKSUM_FILE);
      const { index } = await readIndexWithTag();
      const text = formatChecksumFile(index);
      if (checksums?.text === text) return;
      if (await putIf(CHECKSUM_FILE, text, checksums?.etag)) return;
      await sleep(Math.random() * 20 * (attempt + 1));
    }
    throw new AutotestError('ERR_LOCK', `upload location ${name}: ${CHECKSUM_FILE} kept changing under ${INDEX_TRIES.toString()} tries`, {
      hint: 'many packagers are writing this prefix at once; run the upload again',
    });
  };

  /**
   * One read-modify-write of the index that never loses another writer's change: `change`
   * edits a fresh copy and says whether it changed anything; on a 412 it runs again on what
   * the other writer left.
   */
  const updateIndex = async (change: (index: RepositoryIndex) => Promise<boolean> | boolean): Promise<void> => {
    for (let attempt = 0; attempt < INDEX_TRIES; attempt++) {
      const { index, etag, header } = await readIndexWithTag();
      if (!(await change(index))) {
        // Nothing to change, but a packager killed between the writes may have left
        // packages.checksum or the signature behind the manifest: they catch up before an object moves.
        await syncSignature();
        await syncChecksum();
        return;
      }
      if (await putIf(MANIFEST_FILE, formatManifest(index, nextManifestHeader(header, signing?.validDays)), etag)) {
        await syncSignature();
        await syncChecksum();
        return;
      }
      await sleep(Math.random() * 20 * (attempt + 1));
    }
    throw new AutotestError('ERR_LOCK', `upload location ${name}: ${MANIFEST_FILE} kept changing under ${INDEX_TRIES.toString()} tries`, {
      hint: 'many packagers are writing this prefix at once; run the upload again',
    });
  };

  /** Whether the server honours If-Match and If-None-Match on PUT; without them the index could lose entries. */
  const checkConditionalWrites = async (): Promise<void> => {
    if (casChecked.has(casId)) return;
    const probe = path.basename(tempPathFor('/.cas-probe'));
    const probeKey = key(probe);
    try {
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: probeKey, Body: 'probe', IfNoneMatch: '*' }));
      let ignored = true;
      try {
        await client.send(new PutObjectCommand({ Bucket: bucket, Key: probeKey, Body: 'probe', IfNoneMatch: '*' }));
      } catch (error) {
        const problem = s3Problem(error);
        if (problem.kind !== 'precondition') throw error;
        ignored = false;
      }
      const honoured = async (ifMatch: string): Promise<boolean> => {
        try {
          await client.send(new PutObjectCommand({ Bucket: bucket, Key: probeKey, Body: 'probe', IfMatch: ifMatch }));
          return false;
        } catch (error) {
          if (s3Problem(error).kind !== 'precondition') throw error;
          return true;
        }
      };
      if (!ignored && !(await honoured('"00000000000000000000000000000000"'))) ignored = true;
      if (ignored) {
        throw refused(name, 'checking conditional writes', 'this S3 server ignores If-None-Match or If-Match on PUT, so concurrent packagers could lose index entries', undefined,
          'use an S3 server that honours conditional PUTs (AWS since 2024, Ceph, MinIO)');
      }
      casChecked.set(casId, { bareIfMatch: await honoured('00000000000000000000000000000000') });
    } finally {
      await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: probeKey })).catch(() => undefined);
    }
  };

  /** Streams a file up (multipart above part_size, at most upload_concurrency parts in memory) and checks the ETag it gets. */
  /**
   * Streams a file up (multipart above part_size, at most upload_concurrency parts in memory)
   * and checks the ETag it gets. With `onlyIfNew`, an existing object is left alone and the
   * answer is undefined.
   */
  const uploadFile = async (source: string, objectKey: string, file: string, onlyIfNew: boolean): Promise<string[] | undefined> => {
    const { partSizeBytes, uploadConcurrency } = location.settings;
    const hasher = new PartHasher(partSizeBytes);
    const reader = createReadStream(source, { highWaterMark: 1024 * 1024 });
    // pipeline passes a read error on to the upload (which then aborts) and closes the file either way.
    const body: Readable = pipeline(reader, hasher, () => undefined);
    const upload = new Upload({
      client,
      params: { Bucket: bucket, Key: objectKey, Body: body, ContentType: contentTypeOf(file), ...(onlyIfNew ? { IfNoneMatch: '*' } : {}) },
      partSize: partSizeBytes,
      queueSize: uploadConcurrency,
      leavePartsOnError: false,
    });
    let done;
    try {
      done = await upload.done();
    } catch (error) {
      if (onlyIfNew && s3Problem(error).kind === 'precondition') return undefined;
      throw error;
    } finally {
      reader.destroy();
      hasher.destroy();
    }
    const etags = hasher.etags();
    // radosgw 16 answers a completed multipart upload with an empty ETag: then ask for it.
    let etag = bareEtag(done.ETag);
    if (etag === '') etag = bareEtag((await call(`checking ${file}`, () => client.send(new HeadObjectCommand({ Bucket: bucket, Key: objectKey })))).ETag);
    if (!etags.includes(etag)) {
      throw refused(name, `uploading ${file}`, `the object's ETag ${etag} is not that of the bytes sent: corrupted on the way, replaced by another packager meanwhile, or a bucket with SSE-KMS/SSE-C encryption (whose ETags are not md5s, not supported)`);
    }
    return etags;
  };

  const remove = async (files: string[]): Promise<void> => {
    for (const file of files) await call(`deleting ${file}`, () => client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key(file) })));
  };

  /**
   * Deletes a file only while it is still the object looked at (`undefined`: there was none),
   * since another packager may have put a new one there meanwhile. S3 servers without
   * conditional deletes (radosgw 16) leave a moment between the look and the delete.
   */
  const removeIfUnchanged = async (file: string, etag: string | undefined): Promise<boolean> => {
    const now = await head(file);
    if (!now) return true;
    if (etag === undefined || now.etag !== etag) return false;
    await remove([file]);
    return true;
  };

  const list = async (): Promise<Map<string, FileInfo & { etag: string }>> => {
    const files = new Map<string, FileInfo & { etag: string }>();
    let token: string | undefined;
    do {
      const page = await call('listing', () => client.send(new ListObjectsV2Command({
        Bucket: bucket, Prefix: listPrefix, Delimiter: '/', ContinuationToken: token,
      })));
      for (const object of page.Contents ?? []) {
        const file = (object.Key ?? '').slice(listPrefix.length);
        if (file === '' || file.includes('/')) continue;
        files.set(file, { size: object.Size ?? 0, mtimeMs: object.LastModified?.getTime() ?? 0, etag: bareEtag(object.ETag) });
      }
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
    return files;
  };

  const digest = async (file: string): Promise<Digests & { etag: string }> => {
    let answer;
    try {
      answer = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key(file) }));
    } catch (error) {
      const problem = s3Problem(error);
      if (problem.kind === 'notFound') throw new AutotestError('ERR_NOT_FOUND', `${name}: ${file} is missing`);
      throw refused(name, `reading ${file}`, problem, error);
    }
    const digests = new DigestStream();
    const body = answer.Body as Readable | undefined;
    if (!body) throw refused(name, `reading ${file}`, 'the S3 server sent no body');
    await call(`reading ${file}`, () => pipelinePromise(body, digests, new Writable({ write: (_chunk, _encoding, done) => { done(); } })));
    return { ...digests.digests(), etag: bareEtag(answer.ETag) };
  };

  /**
   * Copies staged replacements over their old objects (server-side) and deletes the files
   * removed, each only while it is what `before` saw; notes in `touched` what it changed.
   * Returns the ETag of each copy.
   */
  const placeAndRemove = async (change: IndexChange, before: Map<string, string | undefined>, touched: Set<string>): Promise<Map<string, string>> => {
    const copied = new Map<string, string>();
    for (const { entry, staged } of change.add) {
      if (staged.tempPath === key(entry.file)) continue;
      touched.add(entry.file);
      const answer = await call(`moving ${entry.file} into place`, () => client.send(new CopyObjectCommand({
        Bucket: bucket, Key: key(entry.file), CopySource: `${bucket}/${staged.tempPath.split('/').map(encodeURIComponent).join('/')}`,
        ContentType: contentTypeOf(entry.file), MetadataDirective: 'REPLACE',
      })));
      const tag = bareEtag(answer.CopyObjectResult?.ETag);
      if (tag !== '') copied.set(entry.file, tag);
      await call(`deleting the temp of ${entry.file}`, () => client.send(new DeleteObjectCommand({ Bucket: bucket, Key: staged.tempPath })));
    }
    for (const file of change.remove) {
      touched.add(file);
      await removeIfUnchanged(file, before.get(file));
    }
    return copied;
  };

  const discard = async (staged: StagedFile[]): Promise<void> => {
    for (const s of staged) {
      const etags = stagedEtags.get(s.tempPath) ?? [];
      stagedEtags.delete(s.tempPath);
      const file = s.tempPath.slice(listPrefix.length);
      if (isTempName(file)) await remove([file]).catch(() => undefined);
      // Straight to its key: removed only while it is still ours and no entry names it.
      else {
        const index = await readIndexWithTag().then((read) => read.index, () => undefined);
        const now = await head(file).catch(() => undefined);
        if (index && !index.has(file) && now && etags.includes(now.etag)) await remove([file]).catch(() => undefined);
      }
    }
  };

  return {
    location,
    name,

    async prepare() {
      try {
        await client.send(new HeadBucketCommand({ Bucket: bucket }));
      } catch (error) {
        const problem = s3Problem(error);
        // HEAD answers carry no error code: a 404 on the bucket is a missing bucket.
        throw refused(name, 'opening the bucket', problem.kind === 'notFound' ? { ...problem, kind: 'noBucket', why: 'the bucket does not exist (404)' } : problem, error);
      }
      await call('checking conditional writes', checkConditionalWrites);
      return { created: false };
    },

    async readIndex() {
      const { index } = await readIndexWithTag();
      indexRead = index;
      return index;
    },

    fileSize: async (file) => (await head(file))?.size,

    async stage(file, source) {
      const { size } = await stat(source);
      // A new package goes straight to its key, only if nothing is there (If-None-Match: *):
      // no entry can name it. A replacement waits under a temp key until its old entry is out
      // of the index (commit). radosgw 16 ignores the condition on a multipart completion, so
      // for a large file the key is looked at first.
      let existing = indexRead?.has(file) === true;
      if (!existing && (indexRead === undefined || size > location.settings.partSizeBytes)) existing = (await head(file)) !== undefined;
      if (!existing) {
        const etags = await call(`uploading ${file}`, () => uploadFile(source, key(file), file, true));
        if (etags) {
          stagedEtags.set(key(file), etags);
          return { file, tempPath: key(file) };
        }
      }
      if (size > COPY_LIMIT_BYTES) {
        throw refused(name, `replacing ${file}`, `packages over ${(COPY_LIMIT_BYTES / 1024 ** 3).toString()} GiB cannot be replaced on S3 by this version`, undefined,
          'remove it first ("autotest packager remove"), then upload it again');
      }
      const tempKey = key(path.basename(tempPathFor(`/${file}`)));
      const etags = await call(`uploading ${file}`, () => uploadFile(source, tempKey, file, false));
      stagedEtags.set(tempKey, etags ?? []);
      return { file, tempPath: tempKey };
    },

    /**
     * Out of the index first (replaced and removed entries), then the bytes into place, then
     * into the index, each entry only if its key still holds the object this packager wrote:
     * when two packagers publish the same file at once, the one whose object stayed is the one
     * indexed, and the other reports that it lost the race.
     */
    async commit(change: IndexChange) {
      const files = new Set([...change.add.map(({ entry }) => entry.file), ...change.remove]);
      const left = new Map<string, IndexEntry>();
      await updateIndex((index) => {
        left.clear();
        for (const file of files) {
          const entry = index.get(file);
          if (entry) left.set(file, entry);
          index.delete(file);
        }
        return left.size > 0;
      });
      // What each file was when its entry left, to delete only that and to put the entry back
      // if this commit stops halfway.
      const limit = pLimit(16);
      const looked = [...files].filter((file) => left.has(file) || change.remove.includes(file));
      const before = new Map(await Promise.all(looked.map((file) => limit(async () => [file, (await head(file))?.etag] as const))));
      const touched = new Set<string>(change.add.filter(({ entry, staged }) => staged.tempPath === key(entry.file)).map(({ entry }) => entry.file));
      let copiedEtags = new Map<string, string>();
      try {
        copiedEtags = await placeAndRemove(change, before, touched);
      } catch (error) {
        await updateIndex(async (index) => {
          let changed = false;
          for (const [file, entry] of left) {
            if (touched.has(file) || index.has(file)) continue;
            const now = await head(file);
            if (now && now.etag === before.get(file)) {
              index.set(file, entry);
              changed = true;
            }
          }
          return changed;
        }).catch(() => undefined);
        throw error;
      }
      const placed = new Map<string, string[]>();
      for (const { entry, staged } of change.add) placed.set(entry.file, stagedEtags.get(staged.tempPath) ?? []);
      for (const [file, etag] of copiedEtags) placed.get(file)?.unshift(etag);
      const lost: string[] = [];
      await updateIndex(async (index) => {
        lost.length = 0;
        const heads = await Promise.all(change.add.map(({ entry }) => limit(() => head(entry.file))));
        change.add.forEach(({ entry }, i) => {
          const now = heads[i];
          if (now && (placed.get(entry.file) ?? []).includes(now.etag)) index.set(entry.file, entry);
          else lost.push(entry.file);
        });
        for (const entry of change.refresh) {
          if (index.get(entry.file)?.md5 === entry.md5) index.set(entry.file, entry);
        }
        return change.add.length > lost.length || change.refresh.length > 0;
      });
      if (lost.length > 0) {
        throw refused(name, 'publishing', `${lost.join(', ')} ${lost.length === 1 ? 'was' : 'were'} replaced or removed by another packager meanwhile and ${lost.length === 1 ? 'is' : 'are'} not indexed by this one`, undefined,
          'another packager published the same file at the same time and its version stayed; run the upload again if this version should win');
      }
    },

    discard,

    listFiles: async () => [...(await list()).keys()],

    digestFile: async (file) => {
      const { md5, sha256, size } = await digest(file);
      return { md5, sha256, size };
    },

    async cleanTemps() {
      const dead = [...(await list())]
        .filter(([file, info]) => isTempName(file) && isDeadTemp(file, info.mtimeMs))
        .map(([file]) => file);
      await remove(dead);
      // Parts of uploads a killed packager never completed cost storage until aborted.
      let keyMarker: string | undefined;
      let uploadIdMarker: string | undefined;
      do {
        const page = await call('listing unfinished uploads', () => client.send(new ListMultipartUploadsCommand({
          Bucket: bucket, Prefix: listPrefix, KeyMarker: keyMarker, UploadIdMarker: uploadIdMarker,
        })));
        for (const upload of page.Uploads ?? []) {
          if (upload.Key === undefined || upload.UploadId === undefined || Date.now() - (upload.Initiated?.getTime() ?? Date.now()) < DEAD_UPLOAD_MS) continue;
          await call('aborting an unfinished upload', () => client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: upload.Key, UploadId: upload.UploadId })));
          dead.push(`${upload.Key.slice(listPrefix.length)} (unfinished upload)`);
        }
        const more = page.IsTruncated === true && (page.NextKeyMarker !== keyMarker || page.NextUploadIdMarker !== uploadIdMarker);
        keyMarker = more ? page.NextKeyMarker : undefined;
        uploadIdMarker = more ? page.NextUploadIdMarker : undefined;
      } while (keyMarker !== undefined);
      return dead;
    },

    async purge(files) {
      const before = (await readIndexWithTag()).index;
      const bad = new Map<string, string | undefined>();
      for (const file of files) {
        const entry = before.get(file);
        const digests = await digest(file).catch((error: unknown) => {
          if (error instanceof AutotestError && error.code === 'ERR_NOT_FOUND') return undefined;
          throw error;
        });
        if (entry && digests && matchesEntry(entry, digests)) continue;
        bad.set(file, digests?.etag);
      }
      const dropped: string[] = [];
      await updateIndex((index) => {
        dropped.length = 0;
        for (const file of bad.keys()) {
          // Only the entry that was checked: another packager may have republished it since.
          const now = index.get(file);
          const then = before.get(file);
          if (now?.md5 !== then?.md5 || now?.publishedAt !== then?.publishedAt) continue;
          index.delete(file);
          dropped.push(file);
        }
        return dropped.length > 0;
      });
      for (const file of dropped) await removeIfUnchanged(file, bad.get(file));
      return [...bad.keys()].filter((file) => dropped.includes(file) || !before.has(file)).sort();
    },

    async expire(olderThanMs) {
      const old = [...(await list())].filter(([file, info]) => !isHousekeepingName(file) && info.mtimeMs < olderThanMs);
      if (old.length === 0) return [];
      await updateIndex((index) => {
        let changed = false;
        for (const [file] of old) changed = index.delete(file) || changed;
        return changed;
      });
      const removed: string[] = [];
      for (const [file, info] of old) {
        if (await removeIfUnchanged(file, info.etag)) removed.push(file);
      }
      return removed.sort();
    },

    async readSignedPair() {
      const signature = await getText(SIGNATURE_FILE);
      return { signature: signature?.text, manifest: (await getText(MANIFEST_FILE))?.text };
    },

    async sign() {
      await updateIndex(() => true);
      return (await readIndexWithTag()).header?.serial ?? 0;
    },
  };
}

function contentTypeOf(file: string): string {
  if (file.endsWith('.bz2')) return 'application/x-bzip2';
  if (file.endsWith('.gz')) return 'application/gzip';
  if (file.endsWith('.zst')) return 'application/zstd';
  return 'application/octet-stream';
}
