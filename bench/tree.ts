/**
 * The generated benchmark tree: 94 tests, 3 deps and 3 profilers of 250 KB to 1.25 MB each
 * (half log-like text, half incompressible data) and a common_lib, about 70 MB in all.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';

const WORDS = 'kernel test result pass fail iozone dbench ltp sleep memory block device scheduler latency throughput'.split(' ');

/** Log-like text: compressible, but not trivially so. */
function text(bytes: number, seed: number): Buffer {
  let state = seed;
  const parts: string[] = [];
  let length = 0;
  while (length < bytes) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    const line = `${state % 100000} ${WORDS[state % WORDS.length] ?? ''} ${WORDS[(state >>> 8) % WORDS.length] ?? ''} ${(state >>> 4) % 997}\n`;
    parts.push(line);
    length += line.length;
  }
  return Buffer.from(parts.join('')).subarray(0, bytes);
}

/** Writes the tree under `root`; returns its size in bytes. */
export async function generate(root: string): Promise<number> {
  let total = 0;
  const kinds: [string, number][] = [['tests', 94], ['deps', 3], ['profilers', 3]];
  let n = 0;
  for (const [folder, count] of kinds) {
    for (let i = 0; i < count; i += 1) {
      n += 1;
      const dir = path.join(root, folder, `pkg${String(n).padStart(3, '0')}`);
      await mkdir(path.join(dir, 'src'), { recursive: true });
      // Sizes vary from 250 KB to about 1.25 MB, as test packages do.
      const size = 250_000 + ((n * 7919) % 1_000_000);
      await writeFile(path.join(dir, 'control'), text(2000, n));
      await writeFile(path.join(dir, 'src', 'log.txt'), text(Math.floor(size / 2), n + 1000));
      await writeFile(path.join(dir, 'src', 'data.tar.gz'), randomBytes(Math.floor(size / 2)));
      total += 2000 + size;
    }
  }
  await mkdir(path.join(root, 'common_lib'), { recursive: true });
  await writeFile(path.join(root, 'common_lib', 'job.txt'), text(200_000, 1));
  return total + 200_000;
}

