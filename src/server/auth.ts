import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { AutotestError } from '../errors.js';
import { replyError } from './error-answer.js';

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

function bearerToken(request: FastifyRequest): string | undefined {
  return /^Bearer (\S+)$/.exec(request.headers.authorization ?? '')?.[1];
}

/** Whether the request carries the server's token (constant-time, through digests); never answers. */
export function hasToken(expected: string | undefined, request: FastifyRequest): boolean {
  const given = bearerToken(request);
  return expected !== undefined && given !== undefined && timingSafeEqual(digest(given), digest(expected));
}

/**
 * Checks the bearer token of a request that changes a repository. Compared through digests
 * in constant time; the token itself is never logged, echoed or put in an error.
 * Answers 401 itself and returns false when the request may not go on.
 */
export function checkToken(expected: string | undefined, request: FastifyRequest, reply: FastifyReply): boolean {
  const why =
    expected === undefined
      ? 'uploads and deletes are disabled: the server has no upload_token in [SERVER]'
      : bearerToken(request) === undefined
        ? 'a bearer token is required (Authorization: Bearer TOKEN)'
        : hasToken(expected, request)
          ? undefined
          : 'the token is wrong';
  if (why === undefined) return true;
  // The body is never read: the connection is closed after the answer.
  void replyError(
    reply.header('connection', 'close').header('www-authenticate', 'Bearer'),
    new AutotestError('ERR_UNAUTHORIZED', why, {
      hint: expected === undefined ? 'set upload_token in [SERVER] to enable them' : "send the upload_token of the server's [SERVER] section",
    }),
  );
  return false;
}
