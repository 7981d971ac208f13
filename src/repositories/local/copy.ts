import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { AutotestError, errnoCode } from '../../errors.js';
import { fsyncPath, tempPathFor } from '../../fs/atomic.js';
import { DigestStream, matchesEntry, type IndexEntry } from '../../packages/index.js';
import { readLocalIndex } from './write.js';

export interface FetchResult {
  entry: IndexEntry;
  bytes: number;
}

/**
 * Copies `file` from a local repository folder to `dest`, verified against that folder's
 * index before it is renamed into place. A file that fails is never left at `dest`.
 */
export async function fetchFromLocal(dir: string, file: string, dest: string): Promise<FetchResult> {
  const entry = (await readLocalIndex(dir)).get(file);
  if (!entry) {
    throw new AutotestError('ERR_NOT_FOUND', `${dir}: ${file} is not in the repository index`, {
      hint: 'publish it with "autotest packager upload", or check fetch_location',
    });
  }
  await mkdir(path.dirname(dest), { recursive: true });
  const temp = tempPathFor(dest);
  const digest = new DigestStream();
  try {
    await pipeline(createReadStream(path.join(dir, file)), digest, createWriteStream(temp, { flags: 'wx', mode: 0o644 }));
  } catch (error) {
    await rm(temp, { force: true });
    if (errnoCode(error) === 'ENOENT') {
      throw new AutotestError('ERR_NOT_FOUND', `${dir}: ${file} is in the index but missing`, {
        hint: 'run "autotest packager verify --repair" on that location',
        cause: error,
      });
    }
    throw error;
  }
  const digests = digest.digests();
  if (!matchesEntry(entry, digests)) {
    await rm(temp, { force: true });
    const wanted = entry.sha256 ?? entry.md5;
    const found = entry.sha256 !== undefined ? digests.sha256 : digests.md5;
    throw new AutotestError(
      'ERR_CHECKSUM_MISMATCH',
      `${path.join(dir, file)}: checksum ${found} (${digests.size} bytes) does not match the index (${wanted}${entry.size !== undefined ? `, ${entry.size} bytes` : ''})`,
      { hint: 'the copy in the repository is corrupt; run "autotest packager verify --repair" there' },
    );
  }
  await fsyncPath(temp);
  await rename(temp, dest);
  return { entry, bytes: digests.size };
}
