import type { ChildProcess } from 'node:child_process';
import type { PassThrough } from 'node:stream';
import type { FetchSettings } from '../config/index.js';
import { classifyNetworkError, FetchFailure } from '../fetch/errors.js';
import { whenClosed } from '../ssh/session.js';
import { notFound } from './read-index.js';

/** Ends `output` with an error when the process behind it fails. */
export function watchProcess(child: ChildProcess, output: PassThrough, what: string, settings: FetchSettings, endOnSuccess = false): void {
  const { timeoutMs } = settings;
  const started = performance.now();
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    if (stderr.length < 4096) stderr += chunk;
  });
  const timer = setTimeout(() => {
    child.kill('SIGKILL');
    output.destroy(new FetchFailure(`${what}: not complete within ${(timeoutMs / 1000).toString()} s (fetch_timeout)`, { transient: true, down: true }));
  }, timeoutMs);
  output.on('close', () => {
    clearTimeout(timer);
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  child.on('error', (error) => output.destroy(classifyNetworkError(error, what)));
  void whenClosed(child).then(({ code }) => {
    clearTimeout(timer);
    if (code === 0) {
      if (endOnSuccess) output.end();
      return;
    }
    const why = stderr.trim();
    if (code === 255) {
      // ssh exits 255 for a refused connection, a refused key and a timeout alike; only the
      // time it took tells the slow failure (cool-down) from the instant ones, without
      // reading its words.
      const slow = performance.now() - started >= settings.connectTimeoutMs;
      output.destroy(new FetchFailure(`${what}: cannot connect${why ? `: ${why}` : ''}`, { transient: false, down: slow }));
    }
    else if (/No such file|did not match any files|not found/i.test(why)) output.destroy(notFound(what));
    else output.destroy(new FetchFailure(`${what}: ${why || `exit code ${String(code)}`}`, { transient: true, down: false }));
  });
}
