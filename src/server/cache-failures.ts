import { AutotestError, describeError, isAutotestError, type ErrorCode } from '../errors.js';
import { FetchFailure } from '../fetch/index.js';

/**
 * What an upstream's failure means to a client of the front: it timed out (504), it has no
 * such file (404), or it failed some other way (502).
 */
function upstreamCode(error: unknown): ErrorCode {
  const code =
    error instanceof FetchFailure
      ? error.timedOut
        ? 'ERR_TIMEOUT'
        : error.notFound
          ? 'ERR_NOT_FOUND'
          : 'ERR_FETCH'
      : isAutotestError(error)
        ? error.code
        : 'ERR_FETCH';
  return code === 'ERR_TIMEOUT' || code === 'ERR_NOT_FOUND' ? code : 'ERR_FETCH';
}

/** The failures of every upstream tried for one answer; the answer takes the code they share, else ERR_FETCH. */
export class UpstreamFailures {
  readonly messages: string[] = [];
  private readonly codes = new Set<ErrorCode>();

  /** Notes a failed try, said as `message`. */
  add(error: unknown, message = describeError(error)): void {
    this.messages.push(message);
    this.codes.add(upstreamCode(error));
  }

  /** An upstream left out while it cools down after slow failures: down, as far as this answer knows. */
  skipped(label: string, lastFailure: string): void {
    this.messages.push(`${label}: skipped (${lastFailure})`);
    this.codes.add('ERR_FETCH');
  }

  get text(): string {
    return this.messages.join('; ') || 'none to try';
  }

  /** "`what` (every failure)", with the code every failure shares: all timed out is ERR_TIMEOUT, all lacked it ERR_NOT_FOUND. */
  error(what: string): AutotestError {
    const [only] = this.codes;
    const code = this.codes.size === 1 && only !== undefined ? only : 'ERR_FETCH';
    return new AutotestError(code, `${what} (${this.text})`, {
      hint: code === 'ERR_TIMEOUT' ? 'the upstreams are slow or unreachable; raise fetch_timeout or check them' : 'check the upstreams named in fetch_location',
    });
  }
}
