import { AutotestError } from '../errors.js';
import { parseFileName } from './names.js';

export const CHECKSUM_FILE = 'packages.checksum';
export const MANIFEST_FILE = 'packages.json';
/** The manifest's detached SSHSIG signature (see src/signing). */
export const SIGNATURE_FILE = 'packages.json.sig';
const MANIFEST_VERSION = 1;

/** What a repository knows of one of its files. */
export interface IndexEntry {
  file: string;
  md5: string;
  /** From the manifest; absent for entries only packages.checksum holds (Autotest's own). */
  sha256?: string | undefined;
  size?: number | undefined;
  /** sha256 of the uncompressed tar stream, for change detection. */
  sourceDigest?: string | undefined;
  publishedAt?: string | undefined;
}

/** Entries by file name. */
export type RepositoryIndex = Map<string, IndexEntry>;

const MD5_RE = /^[0-9a-f]{32}$/;
const SHA256_RE = /^[0-9a-f]{64}$/;

function badIndex(where: string, why: string): AutotestError {
  return new AutotestError('ERR_BAD_INDEX', `${where}: ${why}`, {
    hint: 'run "autotest packager verify --repair" on the location to rebuild its index',
  });
}

/**
 * What was wrong in an index that was read all the same: each bad line or entry is left out
 * with a problem, so one malformed line never makes a repository's good entries unusable.
 */
const problemsOf = new WeakMap<ReadonlyMap<string, unknown>, { kept: string[]; total: number }>();

/** Problems kept per index: a file of junk must not become a flood of warnings on every install. */
const PROBLEMS_KEPT = 20;

/** The problems met while reading `index` (empty for a clean one): the first 20, then how many more. */
export function indexProblems(index: ReadonlyMap<string, unknown>): readonly string[] {
  const problems = problemsOf.get(index);
  if (!problems) return [];
  const more = problems.total - problems.kept.length;
  return more > 0 ? [...problems.kept, `and ${more.toString()} more problems`] : problems.kept;
}

/** Collects problems while reading, keeping the first few and counting the rest. */
function createProblems(): {
  note(problem: string): void;
  attach<T extends ReadonlyMap<string, unknown>>(index: T, ...from: ReadonlyMap<string, unknown>[]): T;
} {
  const kept: string[] = [];
  let total = 0;
  return {
    note(problem) {
      total += 1;
      if (kept.length < PROBLEMS_KEPT) kept.push(problem);
    },
    attach(index, ...from) {
      for (const source of from) {
        const known = problemsOf.get(source);
        if (!known) continue;
        kept.push(...known.kept);
        total += known.total;
      }
      if (total > 0) problemsOf.set(index, { kept: kept.slice(0, PROBLEMS_KEPT), total });
      return index;
    },
  };
}

/**
 * Reads packages.checksum as md5sum writes it: `<md5>  <file>` (or ` *<file>`), one per line.
 * A malformed line, a refused name, or a file listed twice with different checksums (which
 * one is right cannot be known) is left out and named in indexProblems().
 */
export function parseChecksumFile(text: string, where: string): Map<string, string> {
  const result = new Map<string, string>();
  const problems = createProblems();
  const ambiguous = new Set<string>();
  for (const [index, line] of text.split('\n').entries()) {
    if (line.trim() === '') continue;
    const at = `${where}:${(index + 1).toString()}`;
    const match = /^(?<md5>[0-9a-fA-F]{32}) [ *](?<file>.+)$/.exec(line);
    const file = match?.groups?.file;
    const md5 = match?.groups?.md5?.toLowerCase();
    if (!file || !md5) {
      problems.note(`${at}: not an md5sum line, left out: ${JSON.stringify(line.slice(0, 80))}`);
      continue;
    }
    try {
      parseFileName(file);
    } catch (error) {
      problems.note(`${at}: file name refused, left out: ${error instanceof Error ? error.message : String(error)}`);
      continue;
    }
    const earlier = result.get(file);
    if (ambiguous.has(file) || (earlier !== undefined && earlier !== md5)) {
      if (!ambiguous.has(file)) problems.note(`${at}: ${file} is listed again with another checksum; it is left out`);
      ambiguous.add(file);
      result.delete(file);
      continue;
    }
    result.set(file, md5);
  }
  return problems.attach(result);
}

function byName(index: RepositoryIndex): IndexEntry[] {
  return [...index.values()].sort((a, b) => Buffer.compare(Buffer.from(a.file), Buffer.from(b.file)));
}

/** Exactly what `md5sum FILES > packages.checksum` writes, in file-name byte order. */
export function formatChecksumFile(index: RepositoryIndex): string {
  return byName(index)
    .map((entry) => `${entry.md5}  ${entry.file}\n`)
    .join('');
}

/**
 * What a signed manifest says of itself: `serial` grows with every change (a client refuses
 * one older than it has seen: rollback), `expires` (ISO 8601) bounds how long a frozen copy
 * is believed.
 */
export interface ManifestHeader {
  serial?: number | undefined;
  expires?: string | undefined;
}

export function formatManifest(index: RepositoryIndex, header: ManifestHeader = {}): string {
  const packages: Record<string, Omit<IndexEntry, 'file'>> = {};
  for (const { file, ...rest } of byName(index)) packages[file] = rest;
  return `${JSON.stringify({ version: MANIFEST_VERSION, serial: header.serial, expires: header.expires, packages }, null, 1)}\n`;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function parseManifest(text: string, where: string): RepositoryIndex {
  return parseManifestDocument(text, where).index;
}

/** The manifest's entries with its header; a header field of the wrong type is an error, not a default. */
export function parseManifestDocument(text: string, where: string): { index: RepositoryIndex; header: ManifestHeader } {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (error) {
    throw badIndex(where, `not valid JSON (${error instanceof Error ? error.message : String(error)})`);
  }
  if (!isRecord(data) || data.version !== MANIFEST_VERSION || !isRecord(data.packages)) {
    throw badIndex(where, `expected {"version": ${MANIFEST_VERSION}, "packages": {...}}`);
  }
  const { serial, expires } = data;
  if (serial !== undefined && (typeof serial !== 'number' || !Number.isSafeInteger(serial) || serial < 0))
    throw badIndex(where, '"serial" is not a whole number');
  if (expires !== undefined && (typeof expires !== 'string' || Number.isNaN(Date.parse(expires)))) throw badIndex(where, '"expires" is not an ISO 8601 time');
  const index: RepositoryIndex = new Map();
  const problems = createProblems();
  for (const [file, raw] of Object.entries(data.packages)) {
    try {
      parseFileName(file);
    } catch (error) {
      problems.note(`${where}: file name refused, left out: ${error instanceof Error ? error.message : String(error)}`);
      continue;
    }
    if (!isRecord(raw) || typeof raw.md5 !== 'string' || !MD5_RE.test(raw.md5)) {
      problems.note(`${where}: entry "${file}" has no valid md5, left out`);
      continue;
    }
    const sha256 = typeof raw.sha256 === 'string' && SHA256_RE.test(raw.sha256) ? raw.sha256 : undefined;
    const size = typeof raw.size === 'number' && Number.isSafeInteger(raw.size) && raw.size >= 0 ? raw.size : undefined;
    index.set(file, {
      file,
      md5: raw.md5,
      sha256,
      size,
      sourceDigest: typeof raw.sourceDigest === 'string' ? raw.sourceDigest : undefined,
      publishedAt: typeof raw.publishedAt === 'string' ? raw.publishedAt : undefined,
    });
  }
  return { index: problems.attach(index), header: { serial, expires } };
}

/**
 * One index from the two files. packages.checksum is what Autotest clients read and what an
 * older packager may have written alone, so it decides which files are listed and their md5;
 * the manifest adds sha256, size and source digest where its md5 agrees. An entry only in
 * the manifest comes from a writer stopped between the two renames (the manifest is written
 * first) and is kept: its file was in place before either index was written.
 */
export function mergeIndex(checksums: Map<string, string> | undefined, manifest: RepositoryIndex | undefined): RepositoryIndex {
  const merged: RepositoryIndex = createProblems().attach(new Map<string, IndexEntry>(), ...(checksums ? [checksums] : []), ...(manifest ? [manifest] : []));
  if (!checksums) {
    for (const [file, entry] of manifest ?? []) merged.set(file, entry);
    return merged;
  }
  for (const [file, md5] of checksums) {
    const rich = manifest?.get(file);
    merged.set(file, rich && rich.md5 === md5 ? rich : { file, md5 });
  }
  for (const [file, entry] of manifest ?? []) {
    if (!merged.has(file)) merged.set(file, entry);
  }
  return merged;
}

/**
 * One repository's index from its packages.checksum (parsed) and the text of its manifest
 * (either may be missing). A manifest
 * that cannot be read at all leaves packages.checksum (md5) to decide, with a problem saying
 * so; signed indexes, which must not fall back, are read elsewhere.
 */
export function readIndexFiles(
  checksums: Map<string, string> | undefined,
  manifestText: string | undefined,
  where: (file: string) => string,
): { index: RepositoryIndex; header: ManifestHeader | undefined } {
  let manifest: { index: RepositoryIndex; header: ManifestHeader } | undefined;
  const problems = createProblems();
  if (manifestText !== undefined) {
    try {
      manifest = parseManifestDocument(manifestText, where(MANIFEST_FILE));
    } catch (error) {
      if (!(error instanceof AutotestError) || error.code !== 'ERR_BAD_INDEX' || checksums === undefined) throw error;
      problems.note(`${error.message}; using ${CHECKSUM_FILE} alone (md5)`);
    }
  }
  const merged = mergeIndex(checksums, manifest?.index);
  return { index: problems.attach(merged, merged), header: manifest?.header };
}

/** Whether `digests` are what `entry` promises: sha256 where the manifest has it, md5 otherwise. */
export function matchesEntry(entry: IndexEntry, digests: { md5: string; sha256: string; size: number }): boolean {
  if (entry.size !== undefined && entry.size !== digests.size) return false;
  return entry.sha256 !== undefined ? entry.sha256 === digests.sha256 : entry.md5 === digests.md5;
}

/** An index entry as a listing shows it: its file, what kind of package it is, and its digests. */
export interface ListedEntry {
  file: string;
  /** test, dep, profiler, client, or file for a plain file. */
  type: string;
  name: string;
  size: number | undefined;
  md5: string;
  sha256: string | undefined;
  publishedAt: string | undefined;
}

/** The entries of an index as `packager list` and the frontend show them. */
export function listedEntries(index: RepositoryIndex): ListedEntry[] {
  return [...index.values()].map((entry) => {
    const parsed = parseFileName(entry.file);
    return {
      file: entry.file,
      type: parsed.type ?? 'file',
      name: parsed.name,
      size: entry.size,
      md5: entry.md5,
      sha256: entry.sha256,
      publishedAt: entry.publishedAt,
    };
  });
}
