import { AutotestError, describeError, ERROR_CODES, redactSecrets, type ErrorCode } from '../errors.js';

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

/** The exit status a command that failed with `code` ends with (from ERROR_CODES). */
export function exitCodeOf(code: ErrorCode): number {
  return ERROR_CODES[code].exit === 'usage' ? EXIT_USAGE : EXIT_FAILED;
}

export interface Output {
  out: (line: string) => void;
  err: (line: string) => void;
  isTTY: boolean;
}

export const processOutput: Output = {
  out: (line) => process.stdout.write(`${line}\n`),
  err: (line) => process.stderr.write(`${redactSecrets(line)}\n`),
  isTTY: process.stderr.isTTY,
};

/** Prints a failure as "error: what (where)" plus "hint: what to do"; returns the exit code. */
export function printError(output: Output, error: unknown): number {
  if (error instanceof AutotestError) {
    output.err(`error: ${error.message} [${error.code}]`);
    if (error.hint) output.err(`hint: ${error.hint}`);
    return exitCodeOf(error.code);
  }
  output.err(`error: ${describeError(error)}`);
  if (error instanceof Error && error.stack && process.env.AUTOTEST_DEBUG) output.err(error.stack);
  return EXIT_FAILED;
}

/** "1 package", "3 packages". */
export function countOf(count: number, noun: string): string {
  return `${count.toString()} ${noun}${count === 1 ? '' : 's'}`;
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = -1;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1)} ${units[unit] ?? 'B'}`;
}
