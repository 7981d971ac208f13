/**
 * One error class for every failure the user can act on. `code` is stable (tests and
 * callers match on it), `message` names the thing at fault, `hint` says what to do.
 * Programmer errors stay plain `Error`.
 */
export type ErrorCode =
  | 'ERR_CONFIG'
  | 'ERR_BAD_NAME'
  | 'ERR_BAD_LOCATION'
  | 'ERR_UNKNOWN_PACKAGE'
  | 'ERR_CLIENT_TREE'
  | 'ERR_CLIENT_INSTALL'
  | 'ERR_PACK'
  | 'ERR_UNSAFE_ARCHIVE'
  | 'ERR_CORRUPT_ARCHIVE'
  | 'ERR_BAD_ARCHIVE'
  | 'ERR_BAD_INDEX'
  | 'ERR_LOCATION_REFUSED'
  | 'ERR_NO_SPACE'
  | 'ERR_TOO_LARGE'
  | 'ERR_BUSY'
  | 'ERR_TOO_SLOW'
  | 'ERR_TIMEOUT'
  | 'ERR_ABORTED'
  | 'ERR_LOCK'
  | 'ERR_CHECKSUM_MISMATCH'
  | 'ERR_SIGNATURE'
  | 'ERR_NOT_FOUND'
  | 'ERR_RANGE'
  | 'ERR_UNSUPPORTED'
  | 'ERR_TOOL'
  | 'ERR_SSH'
  | 'ERR_SSH_CONNECT'
  | 'ERR_FETCH'
  | 'ERR_ALL_REPOSITORIES_FAILED'
  | 'ERR_OFFLINE_MISSING'
  | 'ERR_LISTEN'
  | 'ERR_CONTROL_FILE'
  | 'ERR_TEST_MODULE'
  | 'ERR_DEP_SETUP'
  | 'ERR_BAD_REQUEST'
  | 'ERR_UNAUTHORIZED'
  | 'ERR_UNAVAILABLE'
  | 'ERR_SERVER'
  | 'ERR_USAGE';

/** How a failure ends a command: `usage` (exit 2) when what the user typed or configured is wrong, else `failed` (exit 1). */
export type ExitKind = 'usage' | 'failed';

/**
 * What each code means at the faces of the program: the HTTP status a server route answers
 * it with, and how the CLI exits. The one place either is decided; every code has both
 * (a code missing here does not compile). Codes no route can meet still get the status
 * that would describe them, so that nothing falls back to a guess.
 */
export const ERROR_CODES: Readonly<Record<ErrorCode, { status: number; exit: ExitKind }>> = {
  ERR_CONFIG: { status: 500, exit: 'usage' },
  ERR_BAD_NAME: { status: 400, exit: 'usage' },
  ERR_BAD_LOCATION: { status: 500, exit: 'usage' },
  ERR_UNKNOWN_PACKAGE: { status: 404, exit: 'failed' },
  ERR_CLIENT_TREE: { status: 500, exit: 'failed' },
  ERR_CLIENT_INSTALL: { status: 502, exit: 'failed' },
  ERR_PACK: { status: 500, exit: 'failed' },
  ERR_UNSAFE_ARCHIVE: { status: 422, exit: 'failed' },
  ERR_CORRUPT_ARCHIVE: { status: 422, exit: 'failed' },
  ERR_BAD_ARCHIVE: { status: 422, exit: 'failed' },
  // An index the server reads from its own locations: the server's state, not the request's.
  ERR_BAD_INDEX: { status: 500, exit: 'failed' },
  ERR_LOCATION_REFUSED: { status: 502, exit: 'failed' },
  ERR_NO_SPACE: { status: 507, exit: 'failed' },
  ERR_TOO_LARGE: { status: 413, exit: 'failed' },
  ERR_BUSY: { status: 503, exit: 'failed' },
  ERR_TOO_SLOW: { status: 408, exit: 'failed' },
  // A step, or an upstream the server waited on, that did not finish in its time.
  ERR_TIMEOUT: { status: 504, exit: 'failed' },
  // The other side went away before the work ended; nobody reads the answer, but logs do.
  ERR_ABORTED: { status: 400, exit: 'failed' },
  ERR_LOCK: { status: 409, exit: 'failed' },
  ERR_CHECKSUM_MISMATCH: { status: 422, exit: 'failed' },
  ERR_SIGNATURE: { status: 500, exit: 'failed' },
  ERR_NOT_FOUND: { status: 404, exit: 'failed' },
  ERR_RANGE: { status: 416, exit: 'failed' },
  ERR_UNSUPPORTED: { status: 501, exit: 'failed' },
  ERR_TOOL: { status: 500, exit: 'failed' },
  ERR_SSH: { status: 502, exit: 'failed' },
  ERR_SSH_CONNECT: { status: 502, exit: 'failed' },
  ERR_FETCH: { status: 502, exit: 'failed' },
  ERR_ALL_REPOSITORIES_FAILED: { status: 502, exit: 'failed' },
  ERR_OFFLINE_MISSING: { status: 404, exit: 'failed' },
  ERR_LISTEN: { status: 500, exit: 'failed' },
  ERR_CONTROL_FILE: { status: 422, exit: 'usage' },
  ERR_TEST_MODULE: { status: 422, exit: 'failed' },
  ERR_DEP_SETUP: { status: 500, exit: 'failed' },
  ERR_BAD_REQUEST: { status: 400, exit: 'failed' },
  ERR_UNAUTHORIZED: { status: 401, exit: 'failed' },
  ERR_UNAVAILABLE: { status: 503, exit: 'failed' },
  ERR_SERVER: { status: 500, exit: 'failed' },
  ERR_USAGE: { status: 400, exit: 'usage' },
};

/** The HTTP status every server route answers `code` with. */
export function httpStatusOf(code: ErrorCode): number {
  return ERROR_CODES[code].status;
}

export interface AutotestErrorOptions {
  hint?: string;
  cause?: unknown;
}

export class AutotestError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;

  constructor(code: ErrorCode, message: string, options: AutotestErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'AutotestError';
    this.code = code;
    this.hint = options.hint;
  }
}

export function isAutotestError(error: unknown, code?: ErrorCode): error is AutotestError {
  return error instanceof AutotestError && (code === undefined || error.code === code);
}

/** The errno code of a Node.js system error, or undefined for anything else. */
export function errnoCode(error: unknown): string | undefined {
  if (error instanceof Error && 'code' in error && typeof error.code === 'string') {
    return error.code;
  }
  return undefined;
}

/** A one-line description of any thrown value, for messages that wrap a cause. */
export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}

/** Query keys that hold secrets, by how they end: token, private_token, api_key, X-Amz-Signature... */
const SECRET_QUERY_KEYS = /([?&][\w.-]*(?:token|key|auth|password|passwd|secret|sig|signature|credential)=)[^&#\s]*/gi;

/** Schemes whose URL user part is often a token (`https://TOKEN@host`): hidden whole. */
const TOKEN_USER_SCHEMES: ReadonlySet<string> = new Set(['http', 'https', 'git', 'git+https', 's3']);
const SCHEME_CHAR = /[a-z0-9+.-]/i;
/** Longest scheme looked for before "://"; real ones are short, and the bound keeps the scan linear. */
const MAX_SCHEME_LENGTH = 32;
/** How far past a "/" a password's "@" is looked for. */
const MAX_PASSWORD_LENGTH = 256;

/** `authority` (the text between "://" and the next "/" or space) with its secrets hidden. */
function redactAuthority(scheme: string, authority: string): string {
  const at = authority.lastIndexOf('@');
  if (at < 0) return authority;
  const userinfo = authority.slice(0, at);
  const colon = userinfo.indexOf(':');
  if (colon >= 0) return `${userinfo.slice(0, colon)}:***${authority.slice(at)}`;
  // Also "proxyhttps" and friends: a scheme that ends as a web one is read as one.
  return TOKEN_USER_SCHEMES.has(scheme.toLowerCase()) || /(?:https?|git|s3)$/i.test(scheme) ? `***${authority.slice(at)}` : authority;
}

/**
 * Hides credentials in URLs wherever they appear in a text: the password of
 * `scheme://user:password@host` (even one holding "@"), the whole user part of web and git
 * URLs (where a token often stands as the user), and secret query parameters. SSH user
 * names stay: they are not secrets and say which account was used. One pass over the text
 * (every error line goes through here, and a location may be very long).
 */
export function redactSecrets(text: string): string {
  let shown = '';
  let copied = 0;
  for (let mark = text.indexOf('://'); mark >= 0; mark = text.indexOf('://', mark + 3)) {
    let start = mark;
    while (start > 0 && mark - start < MAX_SCHEME_LENGTH && SCHEME_CHAR.test(text.charAt(start - 1))) start -= 1;
    while (start < mark && !/[a-z]/i.test(text.charAt(start))) start += 1;
    if (start === mark) continue;
    const from = mark + 3;
    let end = from;
    while (end < text.length && text.charAt(end) !== '/' && !/\s/.test(text.charAt(end))) end += 1;
    // "user:pa/ss@host": a password with a raw "/" (not a valid URL, but a secret all the same)
    // ends at the "@" further on, when what stands before the "/" is not host:port.
    const colon = text.indexOf(':', from);
    if (text.charAt(end) === '/' && colon >= from && colon < end && !/^\d*$/.test(text.slice(colon + 1, end))) {
      // Looked for a short way only, so that the whole pass stays linear.
      const limit = Math.min(text.length, end + MAX_PASSWORD_LENGTH);
      let next = end;
      while (next < limit && !/\s/.test(text.charAt(next)) && text.charAt(next) !== '@') next += 1;
      if (text.charAt(next) === '@') {
        while (next < text.length && text.charAt(next) !== '/' && !/\s/.test(text.charAt(next))) next += 1;
        end = next;
      }
    }
    shown += text.slice(copied, from) + redactAuthority(text.slice(start, mark), text.slice(from, end));
    copied = end;
    mark = Math.max(mark, end - 3);
  }
  shown += text.slice(copied);
  return shown.replace(SECRET_QUERY_KEYS, '$1***');
}
