/**
 * The one way a value reaches a remote shell: wrapped in single quotes, each embedded single
 * quote closed, escaped and reopened. POSIX sh takes everything inside '...' literally, so no
 * metacharacter, space, newline or quote in `value` can start a command.
 */
export function shellQuote(value: string): string {
  if (value.includes('\0')) throw new Error('a NUL byte cannot be passed to a remote command');
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

/** An argument vector as one remote command line, every word quoted. */
export function shellCommand(argv: readonly string[]): string {
  return argv.map(shellQuote).join(' ');
}
