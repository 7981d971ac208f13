import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import type { ResourceKind } from '../resources.js';
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

/**
 * The hashing thread of one owner (a command, a server), started at its first large digest.
 * The thread is referenced only while a digest is under way, so it never keeps a finished
 * command alive; close() ends it.
 */
export class HashingThread {
  private worker: Worker | undefined;
  private nextId = 1;
  private active = 0;
  private readonly waiting = new Map<number, { resolve: (digest: string) => void; reject: (error: Error) => void }>();

  /** A digest for about `expectedBytes`: on this thread when small, where a message costs more than the hash. */
  digesterFor(algorithm: string, expectedBytes: number | undefined): Digester {
    return expectedBytes !== undefined && expectedBytes >= OFF_THREAD_MIN_BYTES ? this.offThreadDigester(algorithm) : inlineDigester(algorithm);
  }

  /**
   * Hashes on the hashing thread. Each chunk is copied once and the copy transferred, so the
   * caller may reuse or write its buffer at once.
   */
  offThreadDigester(algorithm: string): Digester {
    const target = this.thread();
    const id = this.nextId++;
    if (this.active++ === 0) target.ref();
    send(target, { id, type: 'start', algorithm });
    let finished = false;
    const update = (bytes: Buffer): void => {
      const copy = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length);
      send(target, { id, type: 'data', bytes: copy as ArrayBuffer }, [copy as ArrayBuffer]);
    };
    const digest = (): Promise<string> => {
      if (finished) return Promise.reject(new Error('digest() called twice'));
      finished = true;
      return this.finish(target, id);
    };
    return {
      update,
      take(bytes) {
        // A buffer that is the whole of its memory (most socket reads) moves as it is: no copy,
        // and no second 200 MB of garbage for a 200 MB download.
        if (bytes.byteOffset === 0 && bytes.buffer.byteLength === bytes.length && bytes.buffer instanceof ArrayBuffer) {
          send(target, { id, type: 'data', bytes: bytes.buffer }, [bytes.buffer]);
        } else update(bytes);
      },
      digest,
      dispose() {
        if (!finished) digest().catch(() => undefined);
      },
    };
  }

  /** Ends the thread; digests under way fail. */
  async close(): Promise<void> {
    const worker = this.worker;
    if (!worker) return;
    this.failAll(new Error('the hashing thread was closed'));
    await worker.terminate();
  }

  private finish(target: Worker, id: number): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      if (this.worker !== target) {
        reject(new Error('the hashing thread exited'));
        return;
      }
      this.waiting.set(id, {
        resolve: (digest) => {
          if (--this.active === 0) target.unref();
          resolve(digest);
        },
        reject,
      });
      send(target, { id, type: 'end' });
    });
  }

  /** A hashing thread that died takes its digests with it: each waiter gets the error. */
  private failAll(error: Error): void {
    this.worker = undefined;
    this.active = 0;
    for (const waiter of this.waiting.values()) waiter.reject(error);
    this.waiting.clear();
  }

  private thread(): Worker {
    if (!this.worker) {
      // Beside this module: hash-worker.js from tsc, or hash-worker.mjs in the bundled client runtime.
      const created = new Worker(new URL(import.meta.url.endsWith('.mjs') ? './hash-worker.mjs' : './hash-worker.js', import.meta.url));
      created.on('message', (answer: HashAnswer) => {
        this.waiting.get(answer.id)?.resolve(answer.digest);
        this.waiting.delete(answer.id);
      });
      created.on('error', (error) => {
        if (this.worker === created) this.failAll(error);
      });
      created.on('exit', (code) => {
        if (this.worker === created) this.failAll(new Error(`the hashing thread exited (code ${code.toString()})`));
      });
      created.unref();
      this.worker = created;
    }
    return this.worker;
  }
}

export const HASHING_THREAD: ResourceKind<HashingThread> = {
  name: 'the hashing thread',
  create: () => new HashingThread(),
  close: (thread) => thread.close(),
};

function send(target: Worker, message: HashRequest, transfer: ArrayBuffer[] = []): void {
  target.postMessage(message, transfer);
}

/** Hashes on the main thread: for small files, where a message costs more than the hash. */
export function inlineDigester(algorithm: string): Digester {
  const hash = createHash(algorithm);
  return {
    update: (bytes) => {
      hash.update(bytes);
    },
    take: (bytes) => {
      hash.update(bytes);
    },
    digest: () => Promise.resolve(hash.digest('hex')),
    dispose: () => undefined,
  };
}
