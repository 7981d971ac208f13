import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../fs/atomic.js';
import type { SerialMemory } from '../signing/index.js';

/** In the package cache. */
export const SERIALS_FILE = 'repository-serials.json';

async function readSerials(file: string): Promise<Map<string, number>> {
  const serials = new Map<string, number>();
  try {
    const data: unknown = JSON.parse(await readFile(file, 'utf8'));
    if (typeof data === 'object' && data !== null) {
      for (const [name, serial] of Object.entries(data)) {
        if (typeof serial === 'number' && Number.isSafeInteger(serial)) serials.set(name, serial);
      }
    }
  } catch {
    // None yet, or damaged: nothing is remembered, as on a machine that never fetched.
  }
  return serials;
}

/**
 * The newest signed serial this machine has verified from each repository, kept in the
 * package cache so every later install (and every job) refuses an older index: a rollback.
 * Several installers may remember at once: each writes the largest of what it knows and
 * what the file holds, so a serial never goes back.
 */
export async function openSerialMemory(cacheDir: string | undefined): Promise<SerialMemory> {
  const file = cacheDir === undefined ? undefined : path.join(cacheDir, SERIALS_FILE);
  const serials = file === undefined ? new Map<string, number>() : await readSerials(file);
  return {
    newest: (repository) => serials.get(repository),
    async remember(repository, serial) {
      if ((serials.get(repository) ?? -1) >= serial) return;
      serials.set(repository, serial);
      if (file === undefined) return;
      await mkdir(path.dirname(file), { recursive: true });
      const merged = await readSerials(file);
      for (const [name, value] of serials) merged.set(name, Math.max(value, merged.get(name) ?? value));
      await writeFileAtomic(file, `${JSON.stringify(Object.fromEntries(merged), null, 2)}\n`);
    },
  };
}
