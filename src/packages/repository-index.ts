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

/** Reads packages.checksum as md5sum writes it: `<md5>  <file>` (or ` *<file>`), one per line. */
export function parseChecksumFile(text: string, where: string): Map<string, string> {
  const result = new Map<string, string>();
  for (const [index, line] of text.split('\n').entries()) {
    if (line.trim() === '') continue;
    const match = /^(?<md5>[0-9a-fA-F]{32}) [ *](?<file>.+)$/.exec(line);
    const file = match?.groups?.file;
    const md5 = match?.groups?.md5;
    if (!file || !md5) throw badIndex(`${where}:${index + 1}`, `not an md5sum line: ${JSON.stringify(line.slice(0, 80))}`);
    try {
      parseFileName(file);
    } catch (error) {
      throw badIndex(`${where}:${index + 1}`, `file name refused: ${error instanceof Error ? error.message : String(error)}`);
    }
    result.set(file, md5.toLowerCase());
  }
  return result;
}

function byName(index: RepositoryIndex): IndexEntry[] {
  return [...index.values()].sort((a, b) => Buffer.compare(Buffer.from(a.file), Buffer.from(b.file)));
}

/** Exactly what `md5sum FILES > packages.checksum` writes, in file-name byte order. */
export function formatChecksumFile(index: RepositoryIndex): string {
  return byName(index).map((entry) => `${entry.md5}  ${entry.file}\n`).join('');
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
  if (serial !== undefined && (typeof serial !== 'number' || !Number.isSafeInteger(serial) || serial < 0)) throw badIndex(where, '"serial" is not a whole number');
  if (expires !== undefined && (typeof expires !== 'string' || Number.isNaN(Date.parse(expires)))) throw badIndex(where, '"expires" is not an ISO 8601 time');
  const index: RepositoryIndex = new Map();
  for (const [file, raw] of Object.entries(data.packages)) {
    parseFileName(file);
    if (!isRecord(raw) || typeof raw.md5 !== 'string' || !MD5_RE.test(raw.md5)) throw badIndex(where, `entry "${file}" has no valid md5`);
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
  return { index, header: { serial, expires } };
}

/**
 * One index from the two files. packages.checksum is what Autotest clients read and what an
 * older packager may have written alone, so it decides which files are listed and their md5;
 * the manifest adds sha256, size and source digest where its md5 agrees. An entry only in
 * the manifest comes from a writer stopped between the two renames (the manifest is written
 * first) and is kept: its file was in place before either index was written.
 */
export function mergeIndex(checksums: Map<string, string> | undefined, manifest: RepositoryIndex | undefined): RepositoryIndex {
  const merged: RepositoryIndex = new Map();
  if (!checksums) return new Map(manifest ?? []);
  for (const [file, md5] of checksums) {
    const rich = manifest?.get(file);
    merged.set(file, rich && rich.md5 === md5 ? rich : { file, md5 });
  }
  for (const [file, entry] of manifest ?? []) {
    if (!merged.has(file)) merged.set(file, entry);
  }
  return merged;
}

/** Whether `digests` are what `entry` promises: sha256 where the manifest has it, md5 otherwise. */
export function matchesEntry(entry: IndexEntry, digests: { md5: string; sha256: string; size: number }): boolean {
  if (entry.size !== undefined && entry.size !== digests.size) return false;
  return entry.sha256 !== undefined ? entry.sha256 === digests.sha256 : entry.md5 === digests.md5;
}
