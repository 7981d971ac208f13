import type { Readable } from 'node:stream';
import { isAutotestError } from '../errors.js';
import { FetchFailure } from './read-failure.js';
import { CHECKSUM_FILE, MANIFEST_FILE, indexProblems, parseChecksumFile, readIndexFiles, type RepositoryIndex } from '../packages/index.js';
import { readVerifiedIndex, type IndexTrust } from '../signing/index.js';

/**
 * Reading a repository's index, the same for every scheme: each scheme gives how to open one
 * of its files, and these read packages.checksum and packages.json (or the signed manifest
 * alone) through it, bounded in size.
 */

const INDEX_LIMIT = 32 * 1024 * 1024;

export function notFound(what: string): FetchFailure {
  return new FetchFailure(`${what}: not found (404)`, { transient: false, down: false, notFound: true });
}

function indexFrom(name: string, checksums: string | undefined, manifest: string | undefined): RepositoryIndex {
  if (checksums === undefined) {
    throw new FetchFailure(`${name}: has no ${CHECKSUM_FILE}`, { transient: false, down: false });
  }
  const { index } = readIndexFiles(parseChecksumFile(checksums, `${name}/${CHECKSUM_FILE}`), manifest, (file) => `${name}/${file}`);
  const problems = indexProblems(index);
  if (index.size === 0 && problems.length > 0) {
    // Not a repository that lacks the package: one that answers something else (an HTML page, junk).
    throw new FetchFailure(`${name}: its ${CHECKSUM_FILE} has no readable entry (${problems[0] ?? ''})`, { transient: false, down: false });
  }
  return index;
}

/** An index file's bytes, refused past 32 MiB: no repository index comes near it. */
export async function readIndexBody(stream: AsyncIterable<unknown>, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    const buffer = chunk as Buffer;
    size += buffer.length;
    if (size > INDEX_LIMIT) throw new FetchFailure(`${what}: larger than ${INDEX_LIMIT.toString()} bytes, not an index`, { transient: false, down: false });
    chunks.push(buffer);
  }
  return Buffer.concat(chunks);
}

/** A text file of the repository, or undefined when it has none (404). */
async function optionalText(name: string, file: string, open: (file: string) => Promise<Readable>): Promise<string | undefined> {
  try {
    return (await readIndexBody(await open(file), `${name}/${file}`)).toString('utf8');
  } catch (error) {
    if (error instanceof FetchFailure && error.notFound) return undefined;
    throw error;
  }
}

/**
 * The signed manifest's entries alone (packages.checksum is not signed, so it is not read),
 * or undefined for an unsigned repository when signatures are not required.
 */
export async function readTrustedIndex(
  name: string,
  read: (file: string) => Promise<string | undefined>,
  trust: IndexTrust,
): Promise<RepositoryIndex | undefined> {
  try {
    return (await readVerifiedIndex(name, read, trust))?.index;
  } catch (error) {
    if (!isAutotestError(error, 'ERR_SIGNATURE') && !isAutotestError(error, 'ERR_BAD_INDEX')) throw error;
    throw new FetchFailure(error.message, { transient: false, down: false, hint: error.hint, cause: error });
  }
}

/** Reads packages.checksum and packages.json (both at once) through `open`. */
export async function readIndexThrough(name: string, open: (file: string) => Promise<Readable>, trust: IndexTrust | undefined): Promise<RepositoryIndex> {
  const trusted = trust && (await readTrustedIndex(name, (file) => optionalText(name, file, open), trust));
  if (trusted) return trusted;
  const [checksums, manifest] = await Promise.all([optionalText(name, CHECKSUM_FILE, open), optionalText(name, MANIFEST_FILE, open)]);
  return indexFrom(name, checksums, manifest);
}
