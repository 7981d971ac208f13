import { AutotestError, describeError, redactSecrets } from '../errors.js';

/** A failure as reports carry it; unexpected errors keep their message and get a generic code. */
export function toFailure(error: unknown): { code: string; message: string; hint: string | undefined } {
  if (error instanceof AutotestError) return { code: error.code, message: redactSecrets(error.message), hint: error.hint };
  return { code: 'ERR_UNEXPECTED', message: redactSecrets(describeError(error)), hint: undefined };
}
