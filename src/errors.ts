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
  | 'ERR_PACK'
  | 'ERR_UNSAFE_ARCHIVE'
  | 'ERR_CORRUPT_ARCHIVE'
  | 'ERR_BAD_INDEX'
  | 'ERR_LOCATION_REFUSED'
  | 'ERR_NO_SPACE'
  | 'ERR_LOCK'
  | 'ERR_CHECKSUM_MISMATCH'
  | 'ERR_NOT_FOUND'
  | 'ERR_UNSUPPORTED'
  | 'ERR_TOOL'
  | 'ERR_SSH'
  | 'ERR_SSH_CONNECT'
  | 'ERR_FETCH'
  | 'ERR_ALL_REPOSITORIES_FAILED'
  | 'ERR_LISTEN'
  | 'ERR_USAGE';

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

const SECRET_QUERY_KEYS = /([?&](?:token|access_token|auth|password|passwd|secret|sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token)=)[^&#\s]*/gi;

/**
 * Hides credentials in URLs wherever they appear in a text: the password of
 * `scheme://user:password@host` (even one holding "@"), the whole user part of web and git
 * URLs (where a token often stands as the user), and secret query parameters. SSH user
 * names stay: they are not secrets and say which account was used.
 */
export function redactSecrets(text: string): string {
  return text
    .replace(/([a-z][a-z0-9+.-]*:\/\/[^/\s:@]*):[^/\s]*@/gi, '$1:***@')
    .replace(/((?:https?|git|git\+https|s3):\/\/)[^/\s:@]+@/gi, '$1***@')
    .replace(SECRET_QUERY_KEYS, '$1***');
}
