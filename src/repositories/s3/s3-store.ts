import { createReadStream } from 'node:fs';
import path from 'node:path';
import { pipeline, Writable, type Readable } from 'node:stream';
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
import type { FetchTls, S3Location } from '../../config/index.js';
import { AutotestError } from '../../errors.js';
import { tempPathFor } from '../../fs/atomic.js';
import { DigestStream, type Digests } from '../../packages/index.js';
import { s3Client, s3Key, s3Problem } from './client.js';
import type { ConditionalStore, StoredObject, StoredText, UploadSource } from './conditional-store.js';
import { PartHasher } from './part-hasher.js';
import { refused } from './refused.js';
import type { Resources } from '../../resources.js';

/** A multipart upload nobody completed for this long was left by a dead packager. */
const DEAD_UPLOAD_MS = 24 * 3600 * 1000;
/** CopyObject's limit: larger replacements would need a multipart copy. */
const COPY_LIMIT_BYTES = 5 * 1024 ** 3;
const INDEX_CACHE_CONTROL = 'no-cache';
const ZERO_ETAG = '00000000000000000000000000000000';

/** An ETag without quotes or weakness mark, as compared. */
function bareEtag(etag: string | undefined): string {
  return (etag ?? '').replace(/^W\//, '').replace(/^"|"$/g, '');
}

function contentTypeOf(file: string): string {
  if (file.endsWith('.bz2')) return 'application/x-bzip2';
  if (file.endsWith('.gz')) return 'application/gzip';
  if (file.endsWith('.zst')) return 'application/zstd';
  return 'application/octet-stream';
}

/** The SDK client of a location's settings (and TLS files: fetch_ca_file, the client certificate), and a store over its prefix. */
export async function openS3Store(location: S3Location, resources: Resources | undefined, tls?: FetchTls): Promise<S3Store> {
  return new S3Store(location, await s3Client(location.settings, resources, tls));
}

/**
 * An S3 prefix as a conditional store over the SDK. What S3 servers differ in stays here:
 * radosgw 16 compares If-Match with the bare ETag where AWS wants it quoted, answers a
 * completed multipart upload with an empty ETag, and ignores If-None-Match on a multipart
 * completion (conditionalUploadLimitBytes).
 */
export class S3Store implements ConditionalStore {
  readonly name: string;
  readonly copyLimitBytes = COPY_LIMIT_BYTES;
  readonly conditionalUploadLimitBytes: number;
  private readonly bucket: string;
  private readonly listPrefix: string;
  /** The probe of conditional writes, once per store: whether a bare (unquoted) If-Match is honoured too. */
  private conditionsProbed: Promise<{ bareIfMatch: boolean }> | undefined;
  /** Whether If-Match goes quoted (AWS) or bare (radosgw 16): learnt on the first 412 for an unchanged ETag. */
  private quoteEtags = true;

  constructor(
    private readonly location: S3Location,
    private readonly client: S3Client,
  ) {
    this.name = location.text;
    this.bucket = location.bucket;
    this.listPrefix = location.prefix === '' ? '' : `${location.prefix}/`;
    this.conditionalUploadLimitBytes = location.settings.partSizeBytes;
  }

  private key(file: string): string {
    return s3Key(this.location, file);
  }

  private async call<T>(what: string, work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (error) {
      if (error instanceof AutotestError) throw error;
      throw refused(this.name, what, s3Problem(error), error);
    }
  }

  /** Runs a read; a missing object is undefined. */
  private async read<T>(file: string, work: () => Promise<T>): Promise<T | undefined> {
    try {
      return await work();
    } catch (error) {
      const problem = s3Problem(error);
      if (problem.kind === 'notFound') return undefined;
      throw refused(this.name, `reading ${file}`, problem, error);
    }
  }

  /** The bucket is there and conditional writes are honoured. */
  async check(): Promise<void> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
    } catch (error) {
      const problem = s3Problem(error);
      // HEAD answers carry no error code: a 404 on the bucket is a missing bucket.
      throw refused(
        this.name,
        'opening the bucket',
        problem.kind === 'notFound' ? { ...problem, kind: 'noBucket', why: 'the bucket does not exist (404)' } : problem,
        error,
      );
    }
    await this.call('checking conditional writes', () => this.probeConditions());
  }

  head(file: string): Promise<StoredObject | undefined> {
    return this.read(file, async () => {
      const answer = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.key(file) }));
      return { size: answer.ContentLength ?? 0, etag: bareEtag(answer.ETag), mtimeMs: answer.LastModified?.getTime() ?? 0 };
    });
  }

  getText(file: string): Promise<StoredText | undefined> {
    return this.read(file, async () => {
      const answer = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.key(file) }));
      return { text: (await answer.Body?.transformToString('utf8')) ?? '', etag: bareEtag(answer.ETag) };
    });
  }

  private sendText(file: string, text: string, condition: { IfNoneMatch: string } | { IfMatch: string }): Promise<unknown> {
    return this.client.send(
      new PutObjectCommand({
        // An empty index has no length the SDK can see: without the header it warns and sends chunked.
        Bucket: this.bucket,
        Key: this.key(file),
        Body: text,
        ContentLength: Buffer.byteLength(text),
        ContentType: file.endsWith('.json') ? 'application/json' : 'text/plain; charset=utf-8',
        CacheControl: INDEX_CACHE_CONTROL,
        ...condition,
      }),
    );
  }

  async putTextIf(file: string, text: string, etag: string | undefined): Promise<boolean> {
    // Every index write relies on conditions: checked once per store, whatever the command.
    const { bareIfMatch } = await this.call('checking conditional writes', () => this.probeConditions());
    const ifMatch = (quoted: boolean): { IfMatch: string } => ({ IfMatch: quoted ? `"${etag ?? ''}"` : (etag ?? '') });
    try {
      await this.sendText(file, text, etag === undefined ? { IfNoneMatch: '*' } : ifMatch(this.quoteEtags));
      return true;
    } catch (error) {
      const problem = s3Problem(error);
      if (problem.kind !== 'precondition') throw refused(this.name, `writing ${file}`, problem, error);
      if (etag === undefined) return false;
    }
    // A 412 for an object that still has the ETag asked for: this server wants it written
    // the other way (quoted or bare). Learnt once, then every write uses it; only a form the
    // probe showed to be honoured is ever used.
    if ((await this.head(file))?.etag !== etag) return false;
    if (this.quoteEtags && !bareIfMatch) {
      throw refused(
        this.name,
        `writing ${file}`,
        'the server refuses If-Match with the current ETag quoted and does not honour it bare',
        undefined,
        'this S3 server cannot keep an index safe for concurrent packagers; use another server or endpoint',
      );
    }
    try {
      await this.sendText(file, text, ifMatch(!this.quoteEtags));
      this.quoteEtags = !this.quoteEtags;
      return true;
    } catch (error) {
      const problem = s3Problem(error);
      if (problem.kind === 'precondition') return false;
      throw refused(this.name, `writing ${file}`, problem, error);
    }
  }

  /** Whether the server honours If-Match and If-None-Match on PUT; without them the index could lose entries. */
  private probeConditions(): Promise<{ bareIfMatch: boolean }> {
    // A probe that failed (a refusal, or the network) is tried again on the next write.
    this.conditionsProbed ??= this.probeConditionsOnce().catch((error: unknown) => {
      this.conditionsProbed = undefined;
      throw error;
    });
    return this.conditionsProbed;
  }

  private async probeConditionsOnce(): Promise<{ bareIfMatch: boolean }> {
    const probeKey = this.key(path.basename(tempPathFor('/.cas-probe')));
    const put = (condition: { IfNoneMatch: string } | { IfMatch: string }): Promise<unknown> =>
      this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: probeKey, Body: 'probe', ...condition }));
    /** Whether a PUT with this condition, which must fail, is refused with a 412. */
    const refusedWith412 = async (condition: { IfNoneMatch: string } | { IfMatch: string }): Promise<boolean> => {
      try {
        await put(condition);
        return false;
      } catch (error) {
        if (s3Problem(error).kind !== 'precondition') throw error;
        return true;
      }
    };
    try {
      await put({ IfNoneMatch: '*' });
      if (!(await refusedWith412({ IfNoneMatch: '*' })) || !(await refusedWith412({ IfMatch: `"${ZERO_ETAG}"` }))) {
        throw refused(
          this.name,
          'checking conditional writes',
          'this S3 server ignores If-None-Match or If-Match on PUT, so concurrent packagers could lose index entries',
          undefined,
          'use an S3 server that honours conditional PUTs (AWS since 2024, Ceph, MinIO)',
        );
      }
      return { bareIfMatch: await refusedWith412({ IfMatch: ZERO_ETAG }) };
    } finally {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: probeKey })).catch(() => undefined);
    }
  }

  /**
   * Streams a file up (multipart above part_size, at most upload_concurrency parts in memory)
   * and checks the ETag it gets.
   */
  upload(source: UploadSource, file: string, onlyIfNew: boolean): Promise<string[] | undefined> {
    return this.call(`uploading ${file}`, () => this.uploadOnce(source, file, onlyIfNew));
  }

  private async uploadOnce(source: UploadSource, file: string, onlyIfNew: boolean): Promise<string[] | undefined> {
    const { partSizeBytes, uploadConcurrency } = this.location.settings;
    const objectKey = this.key(file);
    const hasher = new PartHasher(partSizeBytes);
    const reader = createReadStream(source.path, { highWaterMark: 1024 * 1024 });
    // pipeline passes a read error on to the upload (which then aborts) and closes the file either way.
    const body: Readable = pipeline(reader, hasher, () => undefined);
    const upload = new Upload({
      client: this.client,
      params: { Bucket: this.bucket, Key: objectKey, Body: body, ContentType: contentTypeOf(file), ...(onlyIfNew ? { IfNoneMatch: '*' } : {}) },
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
    if (etag === '')
      etag = bareEtag((await this.call(`checking ${file}`, () => this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: objectKey })))).ETag);
    if (!etags.includes(etag)) {
      throw refused(
        this.name,
        `uploading ${file}`,
        `the object's ETag ${etag} is not that of the bytes sent: corrupted on the way, replaced by another packager meanwhile, or a bucket with SSE-KMS/SSE-C encryption (whose ETags are not md5s, not supported)`,
      );
    }
    return etags;
  }

  async copy(from: string, to: string): Promise<string | undefined> {
    const answer = await this.call(`moving ${to} into place`, () =>
      this.client.send(
        new CopyObjectCommand({
          Bucket: this.bucket,
          Key: this.key(to),
          CopySource: `${this.bucket}/${this.key(from).split('/').map(encodeURIComponent).join('/')}`,
          ContentType: contentTypeOf(to),
          MetadataDirective: 'REPLACE',
        }),
      ),
    );
    const etag = bareEtag(answer.CopyObjectResult?.ETag);
    return etag === '' ? undefined : etag;
  }

  async delete(file: string): Promise<void> {
    await this.call(`deleting ${file}`, () => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.key(file) })));
  }

  async list(): Promise<Map<string, StoredObject>> {
    const files = new Map<string, StoredObject>();
    let token: string | undefined;
    do {
      const page = await this.call('listing', () =>
        this.client.send(
          new ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: this.listPrefix,
            Delimiter: '/',
            ContinuationToken: token,
          }),
        ),
      );
      for (const object of page.Contents ?? []) {
        const file = (object.Key ?? '').slice(this.listPrefix.length);
        if (file === '' || file.includes('/')) continue;
        files.set(file, { size: object.Size ?? 0, mtimeMs: object.LastModified?.getTime() ?? 0, etag: bareEtag(object.ETag) });
      }
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
    return files;
  }

  async digest(file: string): Promise<Digests & { etag: string }> {
    const answer = await this.read(file, () => this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.key(file) })));
    if (!answer) throw new AutotestError('ERR_NOT_FOUND', `${this.name}: ${file} is missing`);
    const digests = new DigestStream();
    const body = answer.Body as Readable | undefined;
    if (!body) throw refused(this.name, `reading ${file}`, 'the S3 server sent no body');
    await this.call(`reading ${file}`, () =>
      pipelinePromise(
        body,
        digests,
        new Writable({
          write: (_chunk, _encoding, done) => {
            done();
          },
        }),
      ),
    );
    return { ...digests.digests(), etag: bareEtag(answer.ETag) };
  }

  /** Parts of uploads a killed packager never completed cost storage until aborted. */
  async abortDeadUploads(): Promise<string[]> {
    const aborted: string[] = [];
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    do {
      const page = await this.call('listing unfinished uploads', () =>
        this.client.send(
          new ListMultipartUploadsCommand({
            Bucket: this.bucket,
            Prefix: this.listPrefix,
            KeyMarker: keyMarker,
            UploadIdMarker: uploadIdMarker,
          }),
        ),
      );
      for (const upload of page.Uploads ?? []) {
        if (upload.Key === undefined || upload.UploadId === undefined || Date.now() - (upload.Initiated?.getTime() ?? Date.now()) < DEAD_UPLOAD_MS) continue;
        await this.call('aborting an unfinished upload', () =>
          this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: upload.Key, UploadId: upload.UploadId })),
        );
        aborted.push(`${upload.Key.slice(this.listPrefix.length)} (unfinished upload)`);
      }
      const more = page.IsTruncated === true && (page.NextKeyMarker !== keyMarker || page.NextUploadIdMarker !== uploadIdMarker);
      keyMarker = more ? page.NextKeyMarker : undefined;
      uploadIdMarker = more ? page.NextUploadIdMarker : undefined;
    } while (keyMarker !== undefined);
    return aborted;
  }
}
