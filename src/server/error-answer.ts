import type { ServerResponse } from 'node:http';
import type { FastifyReply } from 'fastify';
import { httpStatusOf, redactSecrets, type AutotestError, type ErrorCode } from '../errors.js';

/** The JSON body of every error answer: the stable code, what was wrong, and what to do. */
export interface ErrorBody {
  error: ErrorCode;
  message: string;
  hint?: string | undefined;
}

export function errorBody(error: AutotestError): ErrorBody {
  return { error: error.code, message: redactSecrets(error.message), hint: error.hint };
}

/**
 * Answers `error` on a Fastify route with the status ERROR_CODES gives its code (the one
 * place a status is chosen for a failure).
 */
export function replyError(reply: FastifyReply, error: AutotestError): FastifyReply {
  return reply.code(httpStatusOf(error.code)).send(errorBody(error));
}

/**
 * Answers `code` as JSON on a raw response (the repository files, answered before Fastify's
 * router) with the status ERROR_CODES gives it; returns the body bytes sent.
 */
export function answerError(response: ServerResponse, code: ErrorCode, message: string, extraHeaders: Record<string, string> = {}): number {
  const body = JSON.stringify({ error: code, message: redactSecrets(message) });
  response.writeHead(httpStatusOf(code), {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'x-content-type-options': 'nosniff',
    ...extraHeaders,
  });
  response.end(body);
  return body.length;
}
