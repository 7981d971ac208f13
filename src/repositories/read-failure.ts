import { AutotestError, errnoCode } from '../errors.js';

/**
 * A failure of one try at one repository. `transient` failures (a reset, a stall, a 5xx, a
 * cut body) are tried again after a pause; the others go straight to the next repository.
 * `down` says the failure was slow to come (no connection within the connect timeout, a
 * stall, the deadline): only that starts the repository's cool-down, because only that
 * would cost the same wait again on the next package. An instant failure (refused, TLS, an
 * error answer, a refused key) is cheap to repeat and is often a mistake being fixed just now.
 */
export class FetchFailure extends AutotestError {
  readonly transient: boolean;
  readonly down: boolean;
  /** The repository answered that it has no such file. */
  readonly notFound: boolean;
  /** The repository refused a Range request (416): the kept partial download is of no use there. */
  readonly rangeRefused: boolean;
  /** The body went past the size it may have: what was received is not the package. */
  readonly tooLong: boolean;
  /** No connection, no data or no whole body within its time: a server in front answers 504 for it. */
  readonly timedOut: boolean;

  constructor(
    message: string,
    options: {
      transient: boolean;
      down: boolean;
      notFound?: boolean;
      rangeRefused?: boolean;
      tooLong?: boolean;
      timedOut?: boolean;
      hint?: string;
      cause?: unknown;
    },
  ) {
    super('ERR_FETCH', message, { cause: options.cause, hint: options.hint });
    this.transient = options.transient;
    this.down = options.down;
    this.notFound = options.notFound ?? false;
    this.rangeRefused = options.rangeRefused ?? false;
    this.tooLong = options.tooLong ?? false;
    this.timedOut = options.timedOut ?? false;
  }
}

/** Nothing answers there: known at once, from the peer or the local routing table. */
const REFUSED = new Set(['ECONNREFUSED', 'ENETUNREACH', 'ENOTFOUND', 'EADDRNOTAVAIL']);
/** Known only after waiting: ARP or DNS gave up, or the kernel's own connect timeout. */
const UNREACHABLE_SLOWLY = new Set(['EHOSTUNREACH', 'EAI_AGAIN']);
const TLS_REFUSED = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'EPROTO',
]);
const BROKEN = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'ERR_STREAM_PREMATURE_CLOSE', 'UND_ERR_SOCKET']);

export const TLS_HINT =
  "if the repository uses the lab's own CA, name its PEM bundle in fetch_ca_file ([PACKAGES]); " +
  'if it verifies clients, set fetch_client_cert and fetch_client_key';

/** Whether an errno-like code is a TLS refusal (an untrusted or wrong certificate, a failed handshake). */
export function isTlsCode(code: string): boolean {
  return /^(CERT_|ERR_TLS_|ERR_SSL_)/.test(code) || TLS_REFUSED.has(code);
}

/** Sorts a network error into "nothing there" (next repository), "slow to fail" (cool-down) or "broke off" (retry). */
export function classifyNetworkError(error: unknown, what: string): FetchFailure {
  if (error instanceof FetchFailure) return error;
  const code = errnoCode(error);
  const text = typeof code === 'string' ? code : error instanceof Error ? error.message : String(error);
  if (typeof code === 'string' && REFUSED.has(code)) {
    return new FetchFailure(`${what}: cannot connect (${code})`, { transient: false, down: false, cause: error });
  }
  if (typeof code === 'string' && UNREACHABLE_SLOWLY.has(code)) {
    return new FetchFailure(`${what}: cannot connect (${code})`, { transient: false, down: true, cause: error });
  }
  if (code === 'ETIMEDOUT') {
    // The kernel gave up on a silent peer: worth another try, and slow enough to cool down after.
    return new FetchFailure(`${what}: connection timed out (${code})`, { transient: true, down: true, timedOut: true, cause: error });
  }
  if (typeof code === 'string' && isTlsCode(code)) {
    return new FetchFailure(`${what}: TLS failed (${code})`, { transient: false, down: false, hint: TLS_HINT, cause: error });
  }
  if (typeof code === 'string' && BROKEN.has(code)) {
    return new FetchFailure(`${what}: connection broke off (${code})`, { transient: true, down: false, cause: error });
  }
  return new FetchFailure(`${what}: ${text}`, { transient: true, down: false, cause: error });
}
