/**
 * Connections a command leaves open for reuse (HTTP keep-alive agents, S3 clients, SSH
 * masters). The module that keeps them registers how to close them when it is loaded, so
 * the CLI closes whatever the command opened without loading the modules it never used
 * (an unchanged `packager upload` starts without the HTTP, S3 and fetch code).
 */
const closers = new Set<() => void | Promise<void>>();

export function closeWhenDone(close: () => void | Promise<void>): void {
  closers.add(close);
}

/** Closes every registered kind of connection; the first failure is thrown once all are closed. */
export async function closeConnections(): Promise<void> {
  const results = await Promise.allSettled([...closers].map(async (close) => { await close(); }));
  const failed = results.find((result): result is PromiseRejectedResult => result.status === 'rejected');
  if (failed) throw failed.reason;
}
