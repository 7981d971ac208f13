import path from 'node:path';
import { isAutotestError, redactSecrets } from '../errors.js';
import { flattenFetchLocations, parseFetchLocation, parseLocation, type FetchLocation, type Location, type S3SettingsFor } from './location.js';
import type { PemFile, ServedLocation } from './schema.js';

/** What a parser may need besides the text: where the value was written. */
export interface ValueContext {
  /** Relative paths are resolved against it: the folder of the file the value came from. */
  baseDir: string;
  /** `FILE:LINE: [SECTION] KEY`, kept with a file a key names for later messages. */
  setAt: string;
  s3: S3SettingsFor;
}

/**
 * A value its kind refuses. The reader turns it into the ERR_CONFIG error that names file,
 * line, section and key; `allowed` replaces the kind's own rule where a narrower one was broken.
 */
export class ValueFault extends Error {
  constructor(
    readonly detail?: string,
    readonly allowed?: string,
  ) {
    super(detail ?? 'refused');
  }
}

/** A type of config value: how its text is read, and what is allowed, as error messages say it. */
export interface ValueKind<T> {
  allowed: string;
  /** `text` is trimmed; throws ValueFault. */
  parse(text: string, context: ValueContext): T;
}

interface NumberRule {
  min: number;
  max?: number;
  integer?: boolean;
  /** What one unit as written is worth in the value returned: 1e9 for GB read as bytes. */
  scale?: number;
}

/**
 * A decimal number as Python's int() and float() read it (`10`, `+2.5`, `1e3`, `.5`): not
 * JavaScript's hex, octal or binary (`0x10` is no number to Autotest's ConfigParser).
 */
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

function numberKind(rule: NumberRule): ValueKind<number> {
  // Unbounded kinds stop where the value, in its unit, can still be counted exactly.
  const max = rule.max ?? Math.floor(Number.MAX_SAFE_INTEGER / (rule.scale ?? 1));
  const allowed = `${rule.integer ? 'an integer' : 'a number'} >= ${rule.min}${rule.max === undefined ? '' : ` and <= ${rule.max}`}`;
  return {
    allowed,
    parse(text) {
      const n = Number(text);
      if (!DECIMAL.test(text) || n < rule.min || (rule.integer === true && !Number.isInteger(n))) throw new ValueFault();
      if (n > max) throw new ValueFault(undefined, `${allowed} and <= ${String(max)}`);
      return rule.scale === undefined ? n : Math.round(n * rule.scale);
    },
  };
}

/** The longest time a Node.js timer holds (2^31 - 1 ms, about 24.8 days); longer ones fire at once. */
const MAX_TIMER_SECONDS = Math.floor((2 ** 31 - 1) / 1000);

export const integer = (min: number, max?: number): ValueKind<number> => numberKind({ min, max, integer: true });
export const days = (min: number, max?: number): ValueKind<number> => numberKind({ min, max });
/** Read in milliseconds, bounded by what a timer can hold. */
export const seconds = (min: number): ValueKind<number> => numberKind({ min, max: MAX_TIMER_SECONDS, scale: 1000 });
/** GB of 10^9 bytes, read in bytes. */
export const gigabytes = (min: number): ValueKind<number> => numberKind({ min, scale: 1e9 });
/** MB of 10^6 bytes, read in bytes. */
export const megabytes = (min: number): ValueKind<number> => numberKind({ min, scale: 1e6 });
/** MB of 2^20 bytes (as S3 part sizes go), read in bytes. */
export const mebibytes = (min: number): ValueKind<number> => numberKind({ min, scale: 2 ** 20 });
/** KB/s of 1000 bytes, read in bytes per second. */
export const kilobytesPerSecond = (min: number): ValueKind<number> => numberKind({ min, scale: 1000 });

const BOOLEANS: Record<string, boolean> = {
  true: true,
  yes: true,
  on: true,
  '1': true,
  false: false,
  no: false,
  off: false,
  '0': false,
};

export const boolean: ValueKind<boolean> = {
  allowed: 'true/false, yes/no, on/off or 1/0',
  parse(text) {
    const value = BOOLEANS[text.toLowerCase()];
    if (value === undefined) throw new ValueFault();
    return value;
  },
};

/** One of `values`, case ignored. */
export function oneOf<T extends string>(values: readonly T[], allowed = values.join(', ')): ValueKind<T> {
  return {
    allowed,
    parse(text) {
      const value = values.find((candidate) => candidate === text.toLowerCase());
      if (value === undefined) throw new ValueFault();
      return value;
    },
  };
}

/** Text that matches `pattern`. */
export function matching(pattern: RegExp, allowed: string): ValueKind<string> {
  return {
    allowed,
    parse(text) {
      if (!pattern.test(text)) throw new ValueFault();
      return text;
    },
  };
}

/** An empty value means none: undefined. */
export function optional<T>(kind: ValueKind<T>): ValueKind<T | undefined> {
  return { allowed: kind.allowed, parse: (text, context) => (text === '' ? undefined : kind.parse(text, context)) };
}

function resolvePath(text: string, baseDir: string): string {
  return path.resolve(baseDir, text.startsWith('file://') ? new URL(text).pathname : text);
}

export const folder: ValueKind<string> = {
  allowed: 'a folder path',
  parse(text, context) {
    if (text === '' || /[\0-\x1f]/.test(text)) throw new ValueFault();
    return resolvePath(text, context.baseDir);
  },
};

/** A file read later (a PEM file, a key): its path, and where it was set for the messages about it. */
export const file: ValueKind<PemFile | undefined> = {
  allowed: 'a file path',
  parse(text, context) {
    if (text === '') return undefined;
    if (/[\0-\x1f]/.test(text)) throw new ValueFault();
    return { file: resolvePath(text, context.baseDir), setAt: context.setAt, pem: undefined };
  },
};

/** An S3-compatible server; empty: AWS itself. */
export const endpoint: ValueKind<string | undefined> = {
  allowed: 'http(s)://host[:port] with no user, password, query or fragment',
  parse(text) {
    if (text === '') return undefined;
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw new ValueFault();
    }
    if (!/^https?:$/.test(url.protocol) || url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '') throw new ValueFault();
    return url.origin + url.pathname.replace(/\/+$/, '');
  },
};

const ADDRESS_RE = /^(?:[0-9.]+|\[?[0-9A-Fa-f:.]+\]?|[A-Za-z0-9.-]+)$/;

/** An address to listen on; an IPv6 one loses its brackets. */
export const address: ValueKind<string> = {
  allowed: 'an IP address or a host name',
  parse(text) {
    if (!ADDRESS_RE.test(text)) throw new ValueFault();
    return text.replace(/^\[|\]$/g, '');
  },
};

export function parseList(value: string): string[] {
  return value
    .split(/[,\n]/)
    .map((item) => item.trim())
    .filter((item) => item !== '');
}

/** Each item of a comma list through `parse`; a location error becomes the fault's detail. */
function parseItems<T>(text: string, parse: (item: string) => T): T[] {
  return parseList(text).map((item) => {
    try {
      return parse(item);
    } catch (error) {
      if (isAutotestError(error, 'ERR_BAD_LOCATION')) throw new ValueFault(error.message);
      throw error;
    }
  });
}

/** Locations the packager writes to: http and git are read-only. */
export const uploadLocations: ValueKind<Location[]> = {
  allowed: 'local paths, file://, http(s)://, ssh://[user@]host[:port]/path, s3://bucket/prefix or git URLs',
  parse(text, context) {
    const locations = parseItems(text, (item) => parseLocation(item, context.baseDir, context.s3));
    const readOnly = locations.find((location) => location.kind === 'http' || location.kind === 'git');
    if (readOnly) throw new ValueFault(`"${redactSecrets(readOnly.text)}"`, 'local paths, ssh:// or s3:// URLs (http and git locations are read-only)');
    return locations;
  },
};

export const fetchLocations: ValueKind<FetchLocation[]> = {
  allowed: 'local paths, file://, http(s)://, ssh://[user@]host[:port]/path, s3://bucket/prefix or git URLs, one by one or joined by "|" in groups',
  parse: (text, context) => parseItems(text, (item) => parseFetchLocation(item, context.baseDir, context.s3)),
};

type ServableLocation = Extract<Location, { kind: 'local' | 's3' }>;

export function isServable(location: FetchLocation): location is ServableLocation {
  return location.kind === 'local' || location.kind === 's3';
}

/**
 * A folder is read on every request; an S3 prefix goes through the cache, where each object
 * is fetched (signed) once however many machines ask, and the server's own uploads and
 * deletes drop its cached index (see uploads.ts).
 */
export function asServed(location: ServableLocation): ServedLocation {
  return location.kind === 'local' ? location : { kind: 'cached', upstreams: [location], text: location.text };
}

/** What builtin_dir and custom_dir name: a folder, or upstreams served through the caching front. */
export const servedLocation: ValueKind<ServedLocation> = {
  allowed: 'a folder path or s3://bucket/prefix, or comma-separated http(s)://, ssh://, s3:// or local upstreams ("|" groups allowed; no git)',
  parse(text, context) {
    const upstreams = parseItems(text, (item) => parseFetchLocation(item, context.baseDir, context.s3));
    const [only] = upstreams;
    if (!only) throw new ValueFault();
    const git = flattenFetchLocations(upstreams).find((location) => location.kind === 'git');
    if (git) throw new ValueFault(`"${redactSecrets(git.text)}" is a git repository`);
    if (upstreams.length === 1 && only.kind !== 'group' && isServable(only)) return asServed(only);
    return { kind: 'cached', upstreams, text: upstreams.map((location) => location.text).join(', ') };
  },
};

/** The example config's upload_token: a server that accepted it would take uploads from anyone who read the example. */
export const PLACEHOLDER_UPLOAD_TOKEN = 'change-me-to-a-long-random-string';
const MIN_TOKEN_LENGTH = 16;

/** Why `token` is refused as an upload token, or undefined when it will do. */
export function uploadTokenFault(token: string): string | undefined {
  // Quoted or in capitals it is still the placeholder (ConfigParser keeps quotes in a value).
  if (token.replace(/^(["'])(.*)\1$/, '$2').toLowerCase() === PLACEHOLDER_UPLOAD_TOKEN) return "the example config's placeholder";
  if (/^["']/.test(token)) return 'it starts with a quote, which ConfigParser keeps as part of the token';
  if (token.length < MIN_TOKEN_LENGTH) return `${token.length.toString()} characters`;
  if (/\s/.test(token)) return 'it holds a space';
  if (new Set(token).size < 4) return 'it repeats fewer than 4 different characters';
  return undefined;
}

export const uploadToken: ValueKind<string> = {
  allowed: `at least ${MIN_TOKEN_LENGTH.toString()} characters without spaces or quotes, of at least 4 different ones, not the example's placeholder`,
  parse(text) {
    if (text === '') throw new ValueFault();
    const fault = uploadTokenFault(text);
    if (fault !== undefined) throw new ValueFault(fault);
    return text;
  },
};
