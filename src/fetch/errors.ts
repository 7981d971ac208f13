import { AutotestError, errnoCode } from '../errors.js';

/**
 * A failure of one try at one repository. `transient` failures (a reset, a stall, a 5xx, a
 * cut body) are tried again after a pause; the others go straight to the next repository.
 * `down` says the repository itself is unreachable, which starts its cool-down.
 */
export class FetchFailure extends AutotestError {
  readonly transient: boolean;
  readonly down: boolean;
  /** The repository answered that it has no such file. */
  readonly notFound: boolean;
  /** The repository refused a Range request (416): the kept partial download is of no use there. */
  readonly rangeRefused: boolean;

  constructor(message: string, options: { transient: boolean; down: boolean; notFound?: boolean; rangeRefused?: boolean; cause?: unknown }) {
    super('ERR_FETCH', message, { cause: options.cause });
    this.transient = options.transient;
    this.down = options.down;
    this.notFound = options.notFound ?? false;
    this.rangeRefused = options.rangeRefused ?? false;
  }
}

const UNREACHABLE = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EADDRNOTAVAIL']);
const TLS_REFUSED = new Set(['DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'ERR_SSL_WRONG_VERSION_NUMBER']);
const BROKEN = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'ETIMEDOUT', 'ERR_STREAM_PREMATURE_CLOSE', 'UND_ERR_SOCKET']);

/** Sorts a network error into "cannot reach" (no retry, cool-down) or "broke off" (retry). */
export function classifyNetworkError(error: unknown, what: string): FetchFailure {
  if (error instanceof FetchFailure) return error;
  const code = errnoCode(error);
  const text = typeof code === 'string' ? code : error instanceof Error ? error.message : String(error);
  if (typeof code === 'string' && UNREACHABLE.has(code)) {
    return new FetchFailure(`${what}: cannot connect (${code})`, { transient: false, down: true, cause: error });
  }
  if (typeof code === 'string' && (/^(CERT_|ERR_TLS_|ERR_SSL_)/.test(code) || TLS_REFUSED.has(code))) {
    return new FetchFailure(`${what}: TLS failed (${code})`, { transient: false, down: true, cause: error });
  }
  if (typeof code === 'string' && BROKEN.has(code)) {
    return new FetchFailure(`${what}: connection broke off (${code})`, { transient: true, down: false, cause: error });
  }
  return new FetchFailure(`${what}: ${text}`, { transient: true, down: false, cause: error });
}
