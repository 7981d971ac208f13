import path from 'node:path';
import { AutotestError } from '../errors.js';
import { getIniValue, sectionKeys, type IniDocument, type IniValue } from './ini.js';
import { parseLocation, type Location } from './location.js';

export type Compression = 'bzip2' | 'gzip' | 'zstd';
export const COMPRESSIONS: readonly Compression[] = ['bzip2', 'gzip', 'zstd'];

/** The [PACKAGES] section, validated and typed. */
export interface PackagesConfig {
  fetchLocations: Location[];
  uploadLocations: Location[];
  customUploadLocations: Location[];
  customDownloadLocation: string;
  customMaxAgeDays: number;
  minimumFreeSpaceBytes: number;
  servePackagesFromAutoserv: boolean;
  clientDir: string | undefined;
  compression: Compression;
  fetch: FetchSettings;
}

/** How clients talk to each repository of fetch_location. */
export interface FetchSettings {
  connectTimeoutMs: number;
  /** Longest a whole package download may take from one repository. */
  timeoutMs: number;
  /** Further tries after a transient failure (never after a 404 or a checksum mismatch). */
  retries: number;
  /** How long a repository that keeps failing is skipped. */
  cooldownMs: number;
}

export interface Config {
  /** The file the values came from, or "(embedded default)". */
  source: string;
  packages: PackagesConfig;
  warnings: string[];
}

interface KeySpec {
  description: string;
}

/** Every key of [PACKAGES], with what it allows; the README and example config say the same. */
export const PACKAGES_KEYS: Record<string, KeySpec> = {
  fetch_location: { description: 'comma-separated repositories clients fetch from, first tried first' },
  upload_location: { description: 'comma-separated local paths or ssh:// URLs the packager writes to' },
  custom_upload_location: { description: 'comma-separated locations for custom tests and kernels' },
  custom_download_location: { description: 'local staging folder for frontend uploads' },
  custom_max_age: { description: 'days after which upkeep deletes custom packages (default 40)' },
  minimum_free_space: { description: 'GB (10^9 bytes) an upload location must have free (default 1)' },
  serve_packages_from_autoserv: { description: 'true/false: autoserv serves packages no repository has (default true)' },
  client_dir: { description: 'the client tree the packager packs (default: the bundled example tree)' },
  compression: { description: 'bzip2 (default), gzip or zstd' },
  fetch_connect_timeout: { description: 'seconds to wait for a repository to accept a connection (default 5)' },
  fetch_timeout: { description: 'seconds a package download from one repository may take in all (default 600)' },
  fetch_retries: { description: 'further tries on a transient failure such as a reset or a 5xx (default 2; never on 404)' },
  fetch_cooldown: { description: 'seconds a repository that keeps failing is skipped (default 60)' },
};

const BOOLEANS: Record<string, boolean> = {
  true: true, yes: true, on: true, '1': true,
  false: false, no: false, off: false, '0': false,
};

function badValue(entry: IniValue, key: string, allowed: string, detail?: string): never {
  const found = entry.value === '' ? 'an empty value' : `"${entry.value}"`;
  throw new AutotestError(
    'ERR_CONFIG',
    `${entry.file}:${entry.line}: [PACKAGES] ${key} = ${found}${detail ? ` (${detail})` : ''}: allowed is ${allowed}`,
  );
}

export function parseList(value: string): string[] {
  return value.split(/[,\n]/).map((item) => item.trim()).filter((item) => item !== '');
}

interface Reader {
  get(key: string): IniValue | undefined;
  baseDir(entry: IniValue): string;
}

function readLocations(reader: Reader, key: string, fallback: Location[]): Location[] {
  const entry = reader.get(key);
  if (!entry) return fallback;
  return parseList(entry.value).map((item) => {
    try {
      return parseLocation(item, reader.baseDir(entry));
    } catch (error) {
      badValue(entry, key, 'local paths, file://, http(s)://, ssh://[user@]host[:port]/path or git URLs',
        error instanceof Error ? error.message : String(error));
    }
  });
}

function readNumber(reader: Reader, key: string, fallback: number, opts: { min: number; integer?: boolean }): number {
  const entry = reader.get(key);
  if (!entry) return fallback;
  const text = entry.value.trim();
  const n = Number(text);
  const allowed = `${opts.integer ? 'an integer' : 'a number'} >= ${opts.min}`;
  if (text === '' || !Number.isFinite(n) || n < opts.min || (opts.integer === true && !Number.isInteger(n))) {
    badValue(entry, key, allowed);
  }
  return n;
}

function readBoolean(reader: Reader, key: string, fallback: boolean): boolean {
  const entry = reader.get(key);
  if (!entry) return fallback;
  const value = BOOLEANS[entry.value.trim().toLowerCase()];
  if (value === undefined) badValue(entry, key, 'true/false, yes/no, on/off or 1/0');
  return value;
}

function readPath(reader: Reader, key: string): string | undefined {
  const entry = reader.get(key);
  if (!entry) return undefined;
  const text = entry.value.trim();
  if (text === '' || /[\0-\x1f]/.test(text)) badValue(entry, key, 'a folder path');
  return path.resolve(reader.baseDir(entry), text.startsWith('file://') ? new URL(text).pathname : text);
}

/**
 * Validates [PACKAGES]. `baseDirOf` tells the folder relative paths of a value are resolved
 * against: the folder of the file the value came from.
 */
export function readPackagesConfig(doc: IniDocument, baseDirOf: (file: string) => string): { packages: PackagesConfig; warnings: string[] } {
  const section = 'PACKAGES';
  const reader: Reader = {
    get: (key) => getIniValue(doc, section, key),
    baseDir: (entry) => baseDirOf(entry.file),
  };
  const warnings = sectionKeys(doc, section)
    .filter((key) => !(key in PACKAGES_KEYS))
    .map((key) => {
      const entry = doc.get(section)?.get(key);
      return `${entry?.file ?? '?'}:${entry?.line ?? 0}: unknown key "${key}" in [PACKAGES] is ignored (known: ${Object.keys(PACKAGES_KEYS).join(', ')})`;
    });

  const uploadLocations = readLocations(reader, 'upload_location', []);
  const customUploadLocations = readLocations(reader, 'custom_upload_location', []);
  const compressionEntry = reader.get('compression');
  let compression: Compression = 'bzip2';
  if (compressionEntry) {
    const value = compressionEntry.value.trim().toLowerCase();
    if (!(COMPRESSIONS as readonly string[]).includes(value)) badValue(compressionEntry, 'compression', COMPRESSIONS.join(', '));
    compression = value as Compression;
  }
  const downloadEntry = reader.get('custom_download_location');
  const customDownloadLocation = readPath(reader, 'custom_download_location');
  if (downloadEntry && customDownloadLocation === undefined) badValue(downloadEntry, 'custom_download_location', 'a folder path');

  const packages: PackagesConfig = {
    fetchLocations: readLocations(reader, 'fetch_location', []),
    uploadLocations,
    customUploadLocations,
    customDownloadLocation: customDownloadLocation ?? path.resolve('custom_packages'),
    customMaxAgeDays: readNumber(reader, 'custom_max_age', 40, { min: 0 }),
    minimumFreeSpaceBytes: Math.round(readNumber(reader, 'minimum_free_space', 1, { min: 0 }) * 1e9),
    servePackagesFromAutoserv: readBoolean(reader, 'serve_packages_from_autoserv', true),
    clientDir: readPath(reader, 'client_dir'),
    compression,
    fetch: {
      connectTimeoutMs: Math.round(readNumber(reader, 'fetch_connect_timeout', 5, { min: 0.01 }) * 1000),
      timeoutMs: Math.round(readNumber(reader, 'fetch_timeout', 600, { min: 0.01 }) * 1000),
      retries: readNumber(reader, 'fetch_retries', 2, { min: 0, integer: true }),
      cooldownMs: Math.round(readNumber(reader, 'fetch_cooldown', 60, { min: 0 }) * 1000),
    },
  };
  for (const [key, list] of [['upload_location', uploadLocations], ['custom_upload_location', customUploadLocations]] as const) {
    const wrong = list.find((loc) => loc.kind === 'http' || loc.kind === 'git');
    const entry = reader.get(key);
    if (wrong && entry) badValue(entry, key, 'local paths or ssh:// URLs (http and git locations are read-only)', `"${wrong.text}"`);
  }
  return { packages, warnings };
}
