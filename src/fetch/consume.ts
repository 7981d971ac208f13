import type { FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import type { Digester } from './hashing.js';

/** Bytes received but not yet written before the download is paused. */
const MAX_QUEUED = 8 * 1024 * 1024;

/**
 * Writes `stream` into `handle` from `position` on, hashing each chunk once it is written. One
 * write is under way at a time and takes every chunk that arrived meanwhile (writev), so the
 * disk sees few large writes. Unlike an async iterator, which drops what is buffered when the
 * stream fails, every chunk that arrived before a cut is written before this returns or
 * reports: a resume then starts after it. Returns the bytes written and what stopped it, if anything.
 */
export async function consume(
  stream: Readable,
  handle: FileHandle,
  position: number,
  hash: Digester,
  bound: { bytes: number; exact: boolean; tooLong: () => Error; onWritten: (written: number) => void },
): Promise<{ written: number; error: Error | undefined }> {
  // Set from the data handler: an object, so that the check after `await` reads it afresh.
  const body = { complete: false };
  let queued: Buffer[] = [];
  let queuedBytes = 0;
  let written = 0;
  let writing: Promise<void> | undefined;
  let failed: Error | undefined;
  const flush = (): void => {
    if (writing || queued.length === 0 || failed) return;
    const buffers = queued;
    const bytes = queuedBytes;
    queued = [];
    queuedBytes = 0;
    writing = handle.writev(buffers, position + written).then(
      () => {
        written += bytes;
        writing = undefined;
        bound.onWritten(written);
        // Hashed once on disk, in order: the digest always covers exactly the bytes written.
        for (const buffer of buffers) hash.take(buffer);
        if (stream.isPaused()) stream.resume();
        flush();
      },
      (error: unknown) => {
        writing = undefined;
        failed = error instanceof Error ? error : new Error(String(error));
        stream.destroy(failed);
      },
    );
  };
  stream.on('data', (chunk: Buffer) => {
    if (failed) return;
    if (written + queuedBytes + chunk.length > bound.bytes) {
      // Cut at once, and nothing past the bound is written: the part never outgrows it.
      failed = bound.tooLong();
      stream.destroy(failed);
      return;
    }
    queued.push(chunk);
    queuedBytes += chunk.length;
    if (bound.exact && written + queuedBytes === bound.bytes) {
      // Every byte the index gives is here: the body's end is not waited for (a mirror that
      // then stalls would cost a timeout); verification says whether they are right.
      body.complete = true;
      stream.destroy();
    } else if (queuedBytes > MAX_QUEUED) stream.pause();
    flush();
  });
  let error: Error | undefined;
  try {
    await finished(stream);
  } catch (streamError) {
    if (!body.complete) error = streamError instanceof Error ? streamError : new Error(String(streamError));
  }
  while (writing) {
    await writing;
    flush();
  }
  return { written, error: failed ?? error };
}
