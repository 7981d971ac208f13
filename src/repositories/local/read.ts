import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Location } from '../../config/index.js';
import { errnoCode } from '../../errors.js';
import { classifyNetworkError, FetchFailure } from '../read-failure.js';
import { CHECKSUM_FILE } from '../../packages/index.js';
import { notFound, readTrustedIndex } from '../read-index.js';
import type { FetchRepository } from '../types.js';
import { readLocalIndex } from './write.js';

export function localRepository(location: Extract<Location, { kind: 'local' }>): FetchRepository {
  const name = location.path;
  return {
    name,
    async readIndex(trust) {
      const readText = async (file: string): Promise<string | undefined> => {
        try {
          return await readFile(path.join(location.path, file), 'utf8');
        } catch (error) {
          if (errnoCode(error) === 'ENOENT') return undefined;
          throw new FetchFailure(`${name}: cannot read ${file} (${errnoCode(error) ?? String(error)})`, { transient: false, down: false, cause: error });
        }
      };
      const trusted = trust && (await readTrustedIndex(name, readText, trust));
      if (trusted) return trusted;
      const index = await readLocalIndex(location.path).catch((error: unknown) => {
        throw new FetchFailure(`${name}: cannot read its index (${errnoCode(error) ?? String(error)})`, { transient: false, down: false, cause: error });
      });
      if (index.size === 0) throw new FetchFailure(`${name}: has no ${CHECKSUM_FILE}`, { transient: false, down: false });
      return index;
    },
    open(file, offset) {
      const stream = createReadStream(path.join(location.path, file), { start: offset });
      return new Promise((resolve, reject) => {
        stream.once('open', () => {
          resolve({ stream, start: offset });
        });
        stream.once('error', (error) => {
          reject(errnoCode(error) === 'ENOENT' ? notFound(`${name}/${file}`) : classifyNetworkError(error, `${name}/${file}`));
        });
      });
    },
  };
}
