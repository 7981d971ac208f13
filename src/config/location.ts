import path from 'node:path';
import { AutotestError, redactSecrets } from '../errors.js';

/** A repository location as written in fetch_location, upload_location and friends. */
export type Location =
  | { kind: 'local'; path: string; text: string }
  | { kind: 'ssh'; user: string | undefined; host: string; port: number | undefined; path: string; text: string }
  | { kind: 'http'; url: string; text: string }
  | { kind: 'git'; url: string; branch: string | undefined; text: string }
  | S3Location;

/** How to reach the S3 server of one bucket: the [S3] section, with its [S3:BUCKET] overrides. */
export interface S3Settings {
  /** http(s)://host[:port] of an S3-compatible server; undefined means AWS itself. */
  endpoint: string | undefined;
  region: string;
  /** Bucket in the path (Ceph, MinIO) rather than in the host name (AWS). */
  pathStyle: boolean;
  /** when_required suits servers that are not AWS: no extra checksum trailers they may refuse. */
  checksumMode: 'when_required' | 'when_supported';
  /** A profile of the shared AWS config/credentials files; undefined: the SDK's default chain. */
  profile: string | undefined;
  /** Size of each part of a multipart upload; also the upload threshold. */
  partSizeBytes: number;
  /** Parts in flight at once (memory of an upload: about partSizeBytes x this). */
  uploadConcurrency: number;
}

export interface S3Location {
  kind: 's3';
  bucket: string;
  /** Key prefix without leading or trailing "/" ("" for the bucket's top). */
  prefix: string;
  text: string;
  settings: S3Settings;
}

/** The settings without any [S3] section or AWS variable; a test checks them against the declarations of keys.ts. */
export const DEFAULT_S3_SETTINGS: S3Settings = {
  endpoint: undefined,
  region: 'us-east-1',
  pathStyle: false,
  checksumMode: 'when_supported',
  profile: undefined,
  partSizeBytes: 16 * 1024 * 1024,
  uploadConcurrency: 4,
};

/** The settings of a bucket; the config's [S3] sections, or the defaults. */
export type S3SettingsFor = (bucket: string) => S3Settings;

// Underscores are not DNS but are common in ~/.ssh/config host aliases (and in the seed's own example).
const HOST_RE = /^(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)*$/;
const IPV6_RE = /^\[[0-9A-Fa-f:.]+\]$/;
const USER_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;

function refuse(text: string, why: string): never {
  throw new AutotestError('ERR_BAD_LOCATION', `location "${redactSecrets(text)}": ${why}`, {
    hint: 'use a local path, file:///path, http(s)://host/path, ssh://[user@]host[:port]/path, s3://bucket/prefix or a git URL',
  });
}

function checkPath(text: string, p: string): void {
  if (/[\0-\x1f\x7f]/.test(p)) refuse(text, 'the path contains a control character');
  if (!p.startsWith('/')) refuse(text, 'the path must be absolute');
}

function parseSsh(text: string): Location {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    refuse(text, 'not a valid ssh:// URL');
  }
  if (url.password) refuse(text, 'passwords in ssh:// URLs are not supported; use keys (keyless SSH)');
  const user = url.username === '' ? undefined : decodeURIComponent(url.username);
  if (user !== undefined && !USER_RE.test(user)) refuse(text, `user "${user}" is not a valid user name`);
  const host = url.hostname;
  if (!HOST_RE.test(host) && !IPV6_RE.test(host)) refuse(text, `host "${host}" is not a valid host name`);
  const port = url.port === '' ? undefined : Number(url.port);
  if (url.search || url.hash) refuse(text, 'ssh:// locations take no "?" or "#" part');
  const p = decodeURIComponent(url.pathname);
  checkPath(text, p);
  return { kind: 'ssh', user, host, port, path: p, text };
}

// S3's rules for bucket names (3-63 characters, lower case, digits, dots, hyphens), with the
// underscores and capitals some S3-compatible servers still allow.
const BUCKET_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$/;
const KEY_SEGMENT_RE = /^[A-Za-z0-9._+=,~-]+$/;

function parseS3(text: string, settingsFor: S3SettingsFor): S3Location {
  const rest = text.slice('s3://'.length);
  if (rest.includes('@'))
    refuse(text, 'credentials never go in an s3:// URL; they come from the AWS SDK chain (environment, shared credentials file, profile)');
  if (/[?#\\]/.test(rest)) refuse(text, 's3:// locations take no "?", "#" or "\\"');
  const [bucket = '', ...segments] = rest.replace(/\/+$/, '').split('/');
  if (!BUCKET_RE.test(bucket)) refuse(text, `bucket "${bucket}" is not a valid bucket name (3-63 letters, digits, ".", "-")`);
  for (const segment of segments) {
    if (segment === '' || segment === '.' || segment === '..') refuse(text, 'the prefix has an empty, "." or ".." part');
    if (!KEY_SEGMENT_RE.test(segment)) refuse(text, `prefix part "${segment}" has characters other than letters, digits and ._+=,~-`);
  }
  return { kind: 's3', bucket, prefix: segments.join('/'), text, settings: settingsFor(bucket) };
}

const GIT_BRANCH_RE = /^(?<url>.+?\.git|git:\/\/.+?)(?::(?<branch>[A-Za-z0-9._/-]+))?$/;

function parseGit(text: string): Location | undefined {
  const isGit = text.startsWith('git://') || text.startsWith('git+ssh://') || /\.git(?::[^/:]+)?$/.test(text);
  if (!isGit) return undefined;
  const match = GIT_BRANCH_RE.exec(text);
  const url = match?.groups?.url ?? text;
  const branch = match?.groups?.branch;
  if (/[\s\0-\x1f]/.test(url)) refuse(text, 'a git URL cannot contain spaces or control characters');
  if (url.startsWith('-')) refuse(text, 'a git URL cannot start with "-"');
  // git archive would take it for an option (`:-o/some/file` writes the archive there); no branch starts with one.
  if (branch?.startsWith('-') === true) refuse(text, `branch "${branch}" cannot start with "-"`);
  return { kind: 'git', url, branch, text };
}

/**
 * Reads one location. Relative local paths are resolved against `baseDir` (the folder of
 * the config file that names them, or the working directory for the embedded default).
 */
export function parseLocation(raw: string, baseDir: string, s3SettingsFor: S3SettingsFor = () => DEFAULT_S3_SETTINGS): Location {
  const text = raw.trim();
  if (text === '') refuse(raw, 'empty');
  if (text.startsWith('http://') || text.startsWith('https://')) {
    try {
      const url = new URL(text);
      return { kind: 'http', url: url.href.replace(/\/+$/, ''), text };
    } catch {
      refuse(text, 'not a valid http(s) URL');
    }
  }
  if (text.startsWith('ssh://')) return parseSsh(text);
  if (text.startsWith('s3://')) return parseS3(text, s3SettingsFor);
  const git = parseGit(text);
  if (git) return git;
  if (text.startsWith('file://')) {
    let p: string;
    try {
      p = decodeURIComponent(new URL(text).pathname);
    } catch {
      refuse(text, 'not a valid file:// URL');
    }
    checkPath(text, p);
    return { kind: 'local', path: path.normalize(p).replace(/(.)\/+$/, '$1'), text };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) refuse(text, 'unknown scheme');
  const resolved = path.resolve(baseDir, text);
  checkPath(text, resolved);
  return { kind: 'local', path: resolved.replace(/(.)\/+$/, '$1'), text };
}

/** How a location is named in messages: never with a password. */
export function describeLocation(location: Location): string {
  return location.kind === 'local' ? location.path : redactSecrets(location.text);
}

/**
 * A `|` group of fetch_location: its members are tried in an order of their own for each
 * package (rendezvous hashing of the package's file name), so that every machine asks the
 * same member first for the same package and the members share the packages between them.
 */
export interface LocationGroup {
  kind: 'group';
  members: Location[];
  text: string;
}

/** One item of fetch_location: a repository, or a group of them. */
export type FetchLocation = Location | LocationGroup;

/**
 * The key a group member is hashed by: its URL without a trailing slash, so that
 * `http://f1/builtin` and `http://f1/builtin/` rank alike on every machine.
 */
export function memberKey(location: Location): string {
  return (location.kind === 'http' ? location.url : location.text.trim()).replace(/\/+$/, '');
}

/** Reads one comma-separated item of fetch_location: `a | b | c` is a group, anything else one location. */
export function parseFetchLocation(raw: string, baseDir: string, s3SettingsFor: S3SettingsFor = () => DEFAULT_S3_SETTINGS): FetchLocation {
  const parts = raw.split('|').map((part) => part.trim());
  if (parts.length === 1) return parseLocation(raw, baseDir, s3SettingsFor);
  if (parts.some((part) => part === '')) refuse(raw, 'a "|" group has an empty member');
  const members = parts.map((part) => parseLocation(part, baseDir, s3SettingsFor));
  const seen = new Set<string>();
  for (const member of members) {
    const key = memberKey(member);
    if (seen.has(key)) refuse(raw, `"${redactSecrets(key)}" is twice in the same "|" group`);
    seen.add(key);
  }
  return { kind: 'group', members, text: members.map((member) => member.text).join(' | ') };
}

/** The repositories of fetch_location in the order written, every group's members in place. */
export function flattenFetchLocations(locations: readonly FetchLocation[]): Location[] {
  return locations.flatMap((location) => (location.kind === 'group' ? location.members : [location]));
}
