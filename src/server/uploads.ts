import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Compression, FetchTls, Location } from '../config/index.js';
import { AutotestError, errnoCode, httpStatusOf, isAutotestError } from '../errors.js';
import { checkFileName, DigestStream, extractTarball, parseFileName, type Digests } from '../packages/index.js';
import type { IndexSigning } from '../signing/index.js';
import type { Resources } from '../resources.js';
import { BUNDLED_CLIENT_DIR, removePackages, uploadPackages, type OperationReport } from '../packager/index.js';
import { checkToken } from './auth.js';
import { errorBody, replyError } from './error-answer.js';
import type { ServerMetrics } from './metrics.js';

export interface UploadSettings {
  token: string | undefined;
  maxUploadBytes: number;
  /** Bounds of the trial extraction: entries, and bytes unpacked. */
  maxUploadEntries: number;
  maxUploadExpandedBytes: number;
  /** Uploads received and checked at once; one more is answered 503 with Retry-After. */
  maxConcurrentUploads: number;
  /** An upload slower than this over a window is cut (upload_min_rate, upload_rate_window). */
  minRate: { bytesPerSecond: number; windowMs: number };
  /** custom_download_location: where uploads land before they are checked. */
  stagingDir: string;
  /** custom_upload_location: where checked uploads are published. */
  locations: Location[];
  compression: Compression;
  minimumFreeBytes: number;
  cacheDir: string;
  /** signing_key of the server's config: every index it writes is signed. */
  signing: IndexSigning | undefined;
  /** fetch_ca_file and the client certificate of the server's config, for an https S3 endpoint. */
  tls: FetchTls | undefined;
  /** Told after every publish or delete was tried (whatever its outcome): a cached view of these locations is out of date. */
  published: (locations: Location[]) => void;
  /** The server's connections, for ssh and s3 locations. */
  resources: Resources;
}

const HEX = /^[0-9a-f]+$/;
/** Seconds a client turned away because too many uploads are being checked should wait. */
const BUSY_RETRY_AFTER_SECONDS = 10;
const STALE_STAGING_MS = 3600_000;

/** Staging folders of uploads that a killed server left behind. */
async function sweepStaging(dir: string): Promise<void> {
  const names = await readdir(dir).catch(() => []);
  for (const name of names) {
    if (!name.startsWith('.upload-')) continue;
    const st = await stat(path.join(dir, name)).catch(() => undefined);
    if (st && Date.now() - st.mtimeMs > STALE_STAGING_MS) await rm(path.join(dir, name), { recursive: true, force: true });
  }
}

function tooLarge(limit: number): AutotestError {
  return new AutotestError('ERR_TOO_LARGE', `the upload is larger than max_upload_size (${(limit / 1e6).toString()} MB)`, {
    hint: 'raise max_upload_size in [SERVER] or upload a smaller file',
  });
}

/** Fails the stream once more than `limit` bytes went through. */
function limitBytes(limit: number): Transform {
  let bytes = 0;
  const stream = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      bytes += chunk.length;
      if (bytes > limit) callback(tooLarge(limit));
      else callback(null, chunk);
    },
  });
  return stream;
}

/**
 * Passes bytes on while they come at least at `bytesPerSecond` on average over every window;
 * a body slower than that (a client trickling a byte now and then) is cut with ERR_TOO_SLOW.
 */
function minimumRate({ bytesPerSecond, windowMs }: { bytesPerSecond: number; windowMs: number }): Transform {
  let inWindow = 0;
  const timer =
    bytesPerSecond > 0
      ? setInterval(() => {
          if (inWindow < (bytesPerSecond * windowMs) / 1000) {
            stream.destroy(
              new AutotestError(
                'ERR_TOO_SLOW',
                `the upload sent ${inWindow.toString()} bytes in ${(windowMs / 1000).toString()} s, less than upload_min_rate (${(bytesPerSecond / 1000).toString()} KB/s in [SERVER]); cut`,
                {
                  hint: 'send it again over a faster link, or lower upload_min_rate',
                },
              ),
            );
          }
          inWindow = 0;
        }, windowMs)
      : undefined;
  const stream = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      inWindow += chunk.length;
      callback(null, chunk);
    },
    flush(callback) {
      clearInterval(timer);
      callback();
    },
    destroy(error, callback) {
      clearInterval(timer);
      callback(error);
    },
  });
  return stream;
}

/** Publishes a checked upload to every custom_upload_location; the cached views of them are told, whatever the outcome. */
async function publishUpload(staged: string, settings: UploadSettings): Promise<OperationReport> {
  return uploadPackages({
    clientDir: BUNDLED_CLIENT_DIR,
    selection: { all: false, tests: [], profilers: [], deps: [], client: false, files: [staged] },
    locations: settings.locations,
    compression: settings.compression,
    minimumFreeBytes: settings.minimumFreeBytes,
    cacheDir: settings.cacheDir,
    signing: settings.signing,
    tls: settings.tls,
    resources: settings.resources,
  }).finally(() => {
    settings.published(settings.locations);
  });
}

/** A publish or delete that failed at some location is the locations' failure: 502. */
function reportStatus(report: OperationReport): number {
  return report.ok ? 200 : 502;
}

function summary(report: OperationReport): unknown {
  return {
    ok: report.ok,
    locations: report.locations.map((l) => ({ location: l.location, published: l.published, removed: l.removed, missing: l.missing, error: l.error })),
    failed: report.failedPackages,
  };
}

/** An error answer: the status ERROR_CODES gives the code, and its JSON body. */
function errorAnswer(error: AutotestError): { status: number; body: unknown } {
  return { status: httpStatusOf(error.code), body: errorBody(error) };
}

/** What an upload declares before its body: its file name, and the checksums it says the body has. */
interface DeclaredUpload {
  file: string;
  /** The package type its name gives; undefined for a plain file (a kernel, say). */
  type: string | undefined;
  sha256: string | undefined;
  md5: string | undefined;
}

/** Checks what is known before the body is read: the name, the declared size, the checksum headers. */
function checkDeclaredUpload(request: FastifyRequest<{ Params: { file: string } }>, reply: FastifyReply, limit: number): DeclaredUpload {
  const file = checkFileName(request.params.file);
  const parsed = parseFileName(file);
  if (parsed.type === 'client')
    throw new AutotestError('ERR_BAD_NAME', `${file}: the client package is published by the packager, not uploaded`, {
      hint: 'run autotest packager upload -c on the client tree instead',
    });
  const declared = Number(request.headers['content-length'] ?? NaN);
  if (Number.isFinite(declared) && declared > limit) {
    reply.header('connection', 'close');
    throw tooLarge(limit);
  }
  const sha256 = request.headers['x-checksum-sha256'];
  const md5 = request.headers['x-checksum-md5'];
  for (const [name, value, length] of [
    ['X-Checksum-Sha256', sha256, 64],
    ['X-Checksum-Md5', md5, 32],
  ] as const) {
    if (value !== undefined && (typeof value !== 'string' || value.length !== length || !HEX.test(value))) {
      throw new AutotestError('ERR_BAD_REQUEST', `${file}: ${name} must be ${length.toString()} lowercase hex digits`, {
        hint: 'send the hex digest of the file as sha256sum or md5sum prints it, or leave the header out',
      });
    }
  }
  return { file, type: parsed.type, sha256: typeof sha256 === 'string' ? sha256 : undefined, md5: typeof md5 === 'string' ? md5 : undefined };
}

/** Streams the body to `staged` within the size and rate bounds; returns its digests, checked against those declared. */
async function receiveBody(body: Readable, staged: string, upload: DeclaredUpload, settings: UploadSettings): Promise<Digests> {
  const digest = new DigestStream();
  await pipeline(body, minimumRate(settings.minRate), limitBytes(settings.maxUploadBytes), digest, createWriteStream(staged, { flags: 'wx', mode: 0o644 }));
  const digests = digest.digests();
  if ((upload.sha256 !== undefined && upload.sha256 !== digests.sha256) || (upload.md5 !== undefined && upload.md5 !== digests.md5)) {
    throw new AutotestError(
      'ERR_CHECKSUM_MISMATCH',
      `${upload.file}: received ${digests.size.toString()} bytes with sha256 ${digests.sha256}, not the checksum sent`,
      {
        hint: 'the upload was damaged on the way; send it again',
      },
    );
  }
  return digests;
}

/**
 * A package must be an archive that extracts safely; the trial extraction (into `staging`) is
 * thrown away. Bounded, so that a small archive that unpacks to terabytes cannot fill the disk.
 */
async function trialExtract(staged: string, staging: string, upload: DeclaredUpload, settings: UploadSettings, signal: AbortSignal): Promise<void> {
  const check = path.join(staging, '.check');
  await extractTarball(staged, check, {
    maxBytes: settings.maxUploadExpandedBytes,
    maxEntries: settings.maxUploadEntries,
    names: {
      maxBytes: `max_upload_expanded_size = ${(settings.maxUploadExpandedBytes / 1e6).toString()} MB in [SERVER]`,
      maxEntries: `max_upload_entries = ${settings.maxUploadEntries.toString()} in [SERVER]`,
    },
    signal,
  }).catch((error: unknown) => {
    // The message names the upload and custom_download_location, not the staging folder.
    if (error instanceof AutotestError) {
      const message = error.message.replaceAll(check, `custom_download_location ${settings.stagingDir}`).replaceAll(staged, upload.file);
      throw new AutotestError(error.code, message, { hint: error.hint });
    }
    throw error;
  });
}

/** The answer to an upload that failed, by its error's code; the ways a body can fail on the wire become codes first. */
function failedUploadAnswer(
  error: unknown,
  request: FastifyRequest<{ Params: { file: string } }>,
  reply: FastifyReply,
  settings: UploadSettings,
  gone: AbortSignal,
): { status: number; body: unknown } {
  if (isAutotestError(error, 'ERR_TOO_SLOW')) {
    request.log.warn({ file: request.params.file }, error.message);
    reply.header('connection', 'close');
    return errorAnswer(error);
  }
  if (gone.aborted || errnoCode(error) === 'ERR_STREAM_PREMATURE_CLOSE') {
    request.log.warn('client went away during the upload; nothing kept');
    return errorAnswer(new AutotestError('ERR_ABORTED', 'the upload was cut off; nothing was kept', { hint: 'send it again' }));
  }
  if (errnoCode(error) === 'ENOSPC' || errnoCode(error) === 'EDQUOT') {
    return errorAnswer(
      new AutotestError('ERR_NO_SPACE', `custom_download_location ${settings.stagingDir}: the disk is full while receiving ${request.params.file}`, {
        hint: 'free some space there and send it again; nothing was kept',
        cause: error,
      }),
    );
  }
  if (isAutotestError(error)) return errorAnswer(error);
  throw error;
}

/**
 * PUT /api/custom/FILE streams a custom package (test-NAME.tar.bz2 and friends, or a plain
 * file such as a kernel) into custom_download_location, checks it (name, size, checksum sent
 * in X-Checksum-Sha256 or X-Checksum-Md5, archive safety within max_upload_entries and
 * max_upload_expanded_size), then publishes it to every custom_upload_location with the
 * index. At most max_concurrent_uploads are received and checked at once; one more is
 * answered 503 with Retry-After before its body is read. An uploader that goes away stops
 * the checks, and nothing is published. DELETE /api/custom/FILE removes it from them.
 * Both need the bearer token; whatever fails leaves nothing behind.
 */
export function registerUploads(app: FastifyInstance, settings: UploadSettings, metrics: ServerMetrics): void {
  app.addHook('onReady', async () => {
    await sweepStaging(settings.stagingDir);
  });
  // The body is read here as a stream, never buffered or decoded by a parser, whatever its
  // declared type (Fastify's own text and JSON parsers would turn bytes into a string).
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_request, payload, done) => {
    done(null, payload);
  });

  let running = 0;
  app.put<{ Params: { file: string } }>('/api/custom/:file', async (request, reply) => {
    if (!checkToken(settings.token, request, reply)) return reply;
    if (running >= settings.maxConcurrentUploads) {
      metrics.uploads.inc({ outcome: 'busy' });
      const busy = new AutotestError(
        'ERR_BUSY',
        `the server is checking ${settings.maxConcurrentUploads.toString()} uploads already (max_concurrent_uploads in [SERVER])`,
        {
          hint: `send it again in ${BUSY_RETRY_AFTER_SECONDS.toString()} seconds (Retry-After)`,
        },
      );
      const { status, body } = errorAnswer(busy);
      return reply.code(status).header('retry-after', BUSY_RETRY_AFTER_SECONDS.toString()).header('connection', 'close').send(body);
    }
    running += 1;
    // The uploader going away (the connection closed before the answer) stops the checks:
    // nobody would learn of a publication it no longer waits for.
    const gone = new AbortController();
    const onClose = (): void => {
      if (!reply.raw.writableFinished) gone.abort(new AutotestError('ERR_ABORTED', 'the uploader went away before the checks ended; nothing was published'));
    };
    reply.raw.on('close', onClose);
    let staging: string | undefined;
    let answer: { status: number; body: unknown };
    try {
      const upload = checkDeclaredUpload(request, reply, settings.maxUploadBytes);
      await mkdir(settings.stagingDir, { recursive: true });
      staging = await mkdtemp(path.join(settings.stagingDir, '.upload-'));
      const staged = path.join(staging, upload.file);
      const digests = await receiveBody(request.body as Readable, staged, upload, settings);
      metrics.uploadBytes.inc(digests.size);
      if (upload.type !== undefined) await trialExtract(staged, staging, upload, settings, gone.signal);
      gone.signal.throwIfAborted();
      const report = await publishUpload(staged, settings);
      metrics.uploads.inc({ outcome: report.ok ? 'published' : 'failed' });
      answer = {
        status: reportStatus(report),
        body: { file: upload.file, size: digests.size, md5: digests.md5, sha256: digests.sha256, ...(summary(report) as object) },
      };
    } catch (error) {
      metrics.uploads.inc({ outcome: 'refused' });
      answer = failedUploadAnswer(error, request, reply, settings, gone.signal);
    } finally {
      reply.raw.off('close', onClose);
      try {
        // Removed before the answer leaves: a client that reads it finds nothing staged.
        if (staging) await rm(staging, { recursive: true, force: true });
      } finally {
        running -= 1;
      }
    }
    return reply.code(answer.status).send(answer.body);
  });

  app.delete<{ Params: { file: string } }>('/api/custom/:file', async (request, reply) => {
    if (!checkToken(settings.token, request, reply)) return reply;
    try {
      const file = checkFileName(request.params.file);
      const report = await removePackages({
        files: [file],
        locations: settings.locations,
        signing: settings.signing,
        tls: settings.tls,
        resources: settings.resources,
      }).finally(() => {
        settings.published(settings.locations);
      });
      // A file no location holds is not there to delete: 404, as `packager remove` fails on it,
      // with the error body every failure has (the page shows its message), and where it was missing.
      const nowhere = report.ok && report.locations.every((l) => !l.removed.includes(file));
      if (nowhere) {
        const count = report.locations.length;
        const error = new AutotestError('ERR_NOT_FOUND', `${file}: in none of the ${String(count)} custom location${count === 1 ? '' : 's'} (nothing removed)`);
        return await reply.code(httpStatusOf(error.code)).send({ file, ...(summary(report) as object), ok: false, ...errorBody(error) });
      }
      return await reply.code(reportStatus(report)).send({ file, ...(summary(report) as object) });
    } catch (error) {
      if (!isAutotestError(error)) throw error;
      return await replyError(reply, error);
    }
  });
}
