/**
 * The hashing thread: digests downloads while the main thread moves their bytes, so a large
 * package is verified at the speed it arrives. Messages: start, data (a transferred copy of
 * the bytes), end (answered with the hex digest).
 */
import { createHash, type Hash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';

export type HashRequest = { id: number; type: 'start'; algorithm: string } | { id: number; type: 'data'; bytes: ArrayBuffer } | { id: number; type: 'end' };

export interface HashAnswer {
  id: number;
  digest: string;
}

const hashes = new Map<number, Hash>();

parentPort?.on('message', (message: HashRequest) => {
  switch (message.type) {
    case 'start':
      hashes.set(message.id, createHash(message.algorithm));
      break;
    case 'data':
      hashes.get(message.id)?.update(new Uint8Array(message.bytes));
      break;
    case 'end': {
      const digest = hashes.get(message.id)?.digest('hex') ?? '';
      hashes.delete(message.id);
      parentPort?.postMessage({ id: message.id, digest } satisfies HashAnswer);
      break;
    }
  }
});
