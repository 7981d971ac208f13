import type { ChildProcess } from 'node:child_process';
import type { PassThrough } from 'node:stream';
import type { FetchSettings } from '../config/index.js';
import { classifyNetworkError, FetchFailure } from './read-failure.js';
import { whenClosed } from '../ssh/session.js';
import { notFound } from './read-index.js';

/** How a reading process reports its outcome. */
export interface ProcessOutcome {
  /** End `output` once the process exits 0 (else the caller ends it). */
  endOnSuccess?: boolean;
  /** The exit status that means "no such file" (a fixed script's own), if the command has one. */
  notFoundExit?: number;
  /**
   * Besides ssh's 255, an exit status the command gives for a connection that failed among
   * other fatal errors (git's 128): taking fetch_connect_timeout or longer, it puts the
   * repository in cool-down, as a host that does not answer.
   */
  fatalExit?: number;
}

/**
 * Ends `output` with an error when the process behind it fails. What happened is told by the
 * exit status and the time it took; stderr is only quoted in the message, never read for meaning.
 */
export function watchProcess(child: ChildProcess, output: PassThrough, what: string, settings: FetchSettings, outcome: ProcessOutcome = {}): void {
  const { timeoutMs } = settings;
  const started = performance.now();
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    if (stderr.length < 4096) stderr += chunk;
  });
  const timer = setTimeout(() => {
    child.kill('SIGKILL');
    output.destroy(
      new FetchFailure(`${what}: not complete within ${(timeoutMs / 1000).toString()} s (fetch_timeout)`, { transient: true, down: true, timedOut: true }),
    );
  }, timeoutMs);
  output.on('close', () => {
    clearTimeout(timer);
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  child.on('error', (error) => output.destroy(classifyNetworkError(error, what)));
  void whenClosed(child).then(({ code }) => {
    clearTimeout(timer);
    if (code === 0) {
      if (outcome.endOnSuccess === true) output.end();
      return;
    }
    const why = stderr.trim();
    if (code === 255) {
      // ssh exits 255 for a refused connection, a refused key and a timeout alike; only the
      // time it took tells the slow failure (cool-down) from the instant ones, without
      // reading its words.
      const slow = performance.now() - started >= settings.connectTimeoutMs;
      output.destroy(new FetchFailure(`${what}: cannot connect${why ? `: ${why}` : ''}`, { transient: false, down: slow }));
    } else if (outcome.notFoundExit !== undefined && code === outcome.notFoundExit) output.destroy(notFound(what));
    else {
      const slow = code === outcome.fatalExit && performance.now() - started >= settings.connectTimeoutMs;
      output.destroy(new FetchFailure(`${what}: ${why || `exit code ${String(code)}`}`, { transient: true, down: slow }));
    }
  });
}
