/** Helpers the benchmarks share. */
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';

/** A file of `bytes` random bytes (incompressible, as a kernel image or a tarball is), written 1 MB at a time. */
export async function writeRandom(file: string, bytes: number): Promise<void> {
  const out = createWriteStream(file);
  for (let written = 0; written < bytes; written += 1024 * 1024) {
    if (!out.write(randomBytes(1024 * 1024)))
      await new Promise<void>((resolve) =>
        out.once('drain', () => {
          resolve();
        }),
      );
  }
  await new Promise<void>((resolve, reject) =>
    out.end((error?: Error | null) => {
      if (error) reject(error);
      else resolve();
    }),
  );
}

/** Seconds `run` takes, its promise awaited. */
export async function time(run: () => unknown): Promise<number> {
  const start = performance.now();
  await run();
  return (performance.now() - start) / 1000;
}
