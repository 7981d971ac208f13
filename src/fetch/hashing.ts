import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import type { HashAnswer, HashRequest } from './hash-worker.js';

/** An incremental digest: update with the bytes, then digest once. */
export interface Digester {
  update(bytes: Buffer): void;
  /** Like update, but the caller gives the bytes up: they may be moved to the hashing thread without a copy. */
  take(bytes: Buffer): void;
  digest(): Promise<string>;
  /** Drops a digest that will not be asked for; harmless after digest(). */
  dispose(): void;
}

/** Downloads at least this large are hashed on the hashing thread. */
export const OFF_THREAD_MIN_BYTES = 8 * 1024 * 1024;

let worker: Worker | undefined;
let nextId = 1;
let active = 0;
const waiting = new Map<number, { resolve: (digest: string) => void; reject: (error: Error) => void }>();

/** A hashing thread that died takes its digests with it: each waiter gets the error. */
function failAll(error: Error): void {
  worker = undefined;
  active = 0;
  for (const waiter of waiting.values()) waiter.reject(error);
  waiting.clear();
}

function hashingThread(): Worker {
  if (!worker) {
    // Beside this module: hash-worker.js from tsc, or hash-worker.mjs in the bundled client runtime.
    const created = new Worker(new URL(import.meta.url.endsWith('.mjs') ? './hash-worker.mjs' : './hash-worker.js', import.meta.url));
    created.on('message', (answer: HashAnswer) => {
      waiting.get(answer.id)?.resolve(answer.digest);
      waiting.delete(answer.id);
    });
    created.on('error', (error) => { failAll(error); });
    created.on('exit', (code) => { failAll(new Error(`the hashing thread exited (code ${code.toString()})`)); });
    created.unref();
    worker = created;
  }
  return worker;
}

function send(target: Worker, message: HashRequest, transfer: ArrayBuffer[] = []): void {
  target.postMessage(message, transfer);
}

/** Hashes on the main thread: for small files, where a message costs more than the hash. */
export function inlineDigester(algorithm: string): Digester {
  const hash = createHash(algorithm);
  return {
    update: (bytes) => { hash.update(bytes); },
    take: (bytes) => { hash.update(bytes); },
    digest: () => Promise.resolve(hash.digest('hex')),
    dispose: () => undefined,
  };
}

/**
 * Hashes on the hashing thread. Each chunk is copied once and the copy transferred, so the
 * caller may reuse or write its buffer at once.
 */
export function offThreadDigester(algorithm: string): Digester {
  const target = hashingThread();
  const id = nextId++;
  // The thread is referenced only while a digest is under way, so it never keeps a finished command alive.
  if (active++ === 0) target.ref();
  send(target, { id, type: 'start', algorithm });
  let finished = false;
  return {
    update(bytes) {
      const copy = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length);
      send(target, { id, type: 'data', bytes: copy as ArrayBuffer }, [copy as ArrayBuffer]);
    },
    take(bytes) {
      // A buffer that is the whole of its memory (most socket reads) moves as it is: no copy,
      // and no second 200 MB of garbage for a 200 MB download.
      if (bytes.byteOffset === 0 && bytes.buffer.byteLength === bytes.length && bytes.buffer instanceof ArrayBuffer) {
        send(target, { id, type: 'data', bytes: bytes.buffer }, [bytes.buffer]);
      } else this.update(bytes);
    },
    digest() {
      if (finished) return Promise.reject(new Error('digest() called twice'));
      finished = true;
      return new Promise<string>((resolve, reject) => {
        if (worker !== target) {
          reject(new Error('the hashing thread exited'));
          return;
        }
        waiting.set(id, {
          resolve: (digest) => {
            if (--active === 0) target.unref();
            resolve(digest);
          },
          reject,
        });
        send(target, { id, type: 'end' });
      });
    },
    dispose() {
      if (!finished) this.digest().catch(() => undefined);
    },
  };
}

export function digesterFor(algorithm: string, expectedBytes: number | undefined): Digester {
  return expectedBytes !== undefined && expectedBytes >= OFF_THREAD_MIN_BYTES ? offThreadDigester(algorithm) : inlineDigester(algorithm);
}
