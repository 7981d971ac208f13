import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, type GetObjectCommandOutput } from '@aws-sdk/client-s3';
import type { S3Location } from '../config/index.js';
import { s3Client, s3Key, s3Problem } from '../s3/client.js';

type AnswerError = (response: ServerResponse, status: number, message: string, extra?: Record<string, string>) => number;

const SINGLE_RANGE_RE = /^bytes=(?:\d+-\d*|-\d+)$/;

/**
 * Answers GET/HEAD of one file of an S3 repository by streaming the object through: Range,
 * If-None-Match and If-Modified-Since go to S3 as they came; If-Range with a strong ETag
 * becomes a ranged GET with If-Match (a 412 then means "send it whole"); any other If-Range
 * gets the whole file, as RFC 9110 allows. Returns the body bytes sent.
 */
export async function serveS3File(
  request: IncomingMessage, response: ServerResponse, location: S3Location, file: string,
  contentType: string, answerError: AnswerError,
): Promise<number> {
  const client = await s3Client(location.settings, 'publish');
  const key = s3Key(location, file);
  const rangeHeader = request.headers.range;
  const ifRange = request.headers['if-range'];
  let range = typeof rangeHeader === 'string' && SINGLE_RANGE_RE.test(rangeHeader) ? rangeHeader : undefined;
  let ifMatch: string | undefined;
  if (range !== undefined && ifRange !== undefined) {
    if (typeof ifRange === 'string' && ifRange.startsWith('"')) ifMatch = ifRange;
    else range = undefined;
  }
  const ifNoneMatch = request.headers['if-none-match'];
  const since = request.headers['if-modified-since'];
  const sinceDate = typeof since === 'string' && ifNoneMatch === undefined ? new Date(since) : undefined;
  const conditions = {
    ...(typeof ifNoneMatch === 'string' ? { IfNoneMatch: ifNoneMatch } : {}),
    ...(sinceDate && !Number.isNaN(sinceDate.getTime()) ? { IfModifiedSince: sinceDate } : {}),
  };
  const common = { 'accept-ranges': 'bytes', 'content-type': contentType, 'x-content-type-options': 'nosniff' };

  const failed = async (error: unknown): Promise<number> => {
    const problem = s3Problem(error);
    if (problem.kind === 'notModified') {
      response.writeHead(304, common);
      response.end();
      return 0;
    }
    if (problem.kind === 'notFound') return answerError(response, 404, `${file}: not in this repository`);
    if (problem.kind === 'range') {
      const size = await client.send(new HeadObjectCommand({ Bucket: location.bucket, Key: key })).then((h) => h.ContentLength, () => undefined);
      return answerError(response, 416, `${file}: range not satisfiable`, size === undefined ? {} : { 'content-range': `bytes */${size.toString()}` });
    }
    return answerError(response, 502, `${file}: the S3 repository behind this server failed: ${problem.why}`);
  };

  if (request.method === 'HEAD') {
    try {
      const head = await client.send(new HeadObjectCommand({ Bucket: location.bucket, Key: key, ...conditions }));
      response.writeHead(200, {
        ...common, 'content-length': head.ContentLength ?? 0, ...(head.ETag ? { etag: head.ETag } : {}),
        ...(head.LastModified ? { 'last-modified': head.LastModified.toUTCString() } : {}),
      });
      response.end();
      return 0;
    } catch (error) {
      return failed(error);
    }
  }

  const get = (withRange: boolean): Promise<GetObjectCommandOutput> => client.send(new GetObjectCommand({
    Bucket: location.bucket, Key: key, ...conditions,
    ...(withRange && range !== undefined ? { Range: range, ...(ifMatch ? { IfMatch: ifMatch } : {}) } : {}),
  }));
  let answer;
  try {
    try {
      answer = await get(true);
    } catch (error) {
      // If-Range did not match: the whole file, fresh.
      if (ifMatch === undefined || s3Problem(error).kind !== 'precondition') throw error;
      answer = await get(false);
    }
  } catch (error) {
    return failed(error);
  }
  const body = answer.Body as Readable | undefined;
  const length = answer.ContentLength ?? 0;
  response.writeHead(answer.ContentRange ? 206 : 200, {
    ...common, 'content-length': length,
    ...(answer.ContentRange ? { 'content-range': answer.ContentRange } : {}),
    ...(answer.ETag ? { etag: answer.ETag } : {}),
    ...(answer.LastModified ? { 'last-modified': answer.LastModified.toUTCString() } : {}),
  });
  if (!body) {
    response.end();
    return 0;
  }
  let sent = 0;
  body.on('data', (chunk: Buffer) => { sent += chunk.length; });
  try {
    await pipeline(body, response);
  } catch {
    // S3 cut the body or the client left: never pretend the body was complete.
    response.destroy();
  }
  return sent;
}

/** The plain file names of an S3 repository, for its listing page (no dotfiles, no deeper keys). */
export async function listS3Files(location: S3Location): Promise<string[]> {
  const client = await s3Client(location.settings, 'publish');
  const prefix = location.prefix === '' ? '' : `${location.prefix}/`;
  const names: string[] = [];
  let token: string | undefined;
  do {
    const page = await client.send(new ListObjectsV2Command({ Bucket: location.bucket, Prefix: prefix, Delimiter: '/', ContinuationToken: token }));
    for (const object of page.Contents ?? []) {
      const name = (object.Key ?? '').slice(prefix.length);
      if (name !== '' && !name.startsWith('.') && !name.includes('/')) names.push(name);
    }
    token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
  } while (token !== undefined);
  return names;
}
