import path from 'node:path';
import { AutotestError, redactSecrets } from '../errors.js';
import { getIniValue, sectionKeys, type IniDocument, type IniValue } from './ini.js';
import { closestMatch } from './suggest.js';
import { DEFAULT_S3_SETTINGS, flattenFetchLocations, parseFetchLocation, parseLocation, type FetchLocation, type Location, type S3Settings, type S3SettingsFor } from './location.js';

export type Compression = 'bzip2' | 'gzip' | 'zstd';
export const COMPRESSIONS: readonly Compression[] = ['bzip2', 'gzip', 'zstd'];

/** The [PACKAGES] section, validated and typed. */
export interface PackagesConfig {
  /** In order; a `|` group's members are ordered per package (see fetch/rendezvous.ts). */
  fetchLocations: FetchLocation[];
  uploadLocations: Location[];
  customUploadLocations: Location[];
  customDownloadLocation: string;
  customMaxAgeDays: number;
  minimumFreeSpaceBytes: number;
  servePackagesFromAutoserv: boolean;
  clientDir: string | undefined;
  /** client_cache_size: the client's package cache is trimmed to this by least recent use; 0: unbounded. */
  clientCacheSizeBytes: number;
  compression: Compression;
  fetch: FetchSettings;
  /** The [S3] settings of a bucket (with its [S3:BUCKET] overrides). */
  s3: S3SettingsFor;
  /** signing_key: the OpenSSH ed25519 key that signs every manifest written (read by the commands that write). */
  signingKey: ConfigFile | undefined;
  /** index_valid_days: how long a signed manifest is believed after it was signed; none: no expiry. */
  indexValidDays: number | undefined;
}

/** A file named by a config key. */
export interface ConfigFile {
  file: string;
  /** Where the key was set, for messages: `FILE:LINE: [PACKAGES] KEY`. */
  setAt: string;
}

/** trusted_keys and require_signature: which manifests a client believes. */
export interface FetchTrust {
  /** The allowed_signers file of trusted_keys. */
  file: ConfigFile;
  /** Without a valid signature a repository is passed over (default: on). */
  required: boolean;
  /** The ed25519 public key blobs of the file, read at load (see readTrustedKeysFile). */
  keys: Buffer[] | undefined;
  /** The file's text, which autoserv sends to its hosts. */
  text: string | undefined;
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
  /** Largest download when the index gives no size (an Autotest-only packages.checksum). */
  maxSizeBytes: number;
  /** fetch_ca_file, fetch_client_cert, fetch_client_key; none: the system's CAs alone, no client certificate. */
  tls?: FetchTls;
  /** trusted_keys: manifests are verified before any entry is believed; none: indexes are taken as they are. */
  trust?: FetchTrust | undefined;
}

/** A PEM file named by a config key, and its text once read (see readTlsFiles). */
export interface PemFile {
  file: string;
  /** Where the key was set, for messages: `FILE:LINE: [PACKAGES] KEY`. */
  setAt: string;
  /** Undefined until read, and never read for a client certificate that names a file on autoserv's hosts. */
  pem: string | undefined;
}

/** TLS for https:// repositories and S3 endpoints. */
export interface FetchTls {
  /** Trusted in addition to the system's CAs. */
  ca: PemFile | undefined;
  /** Presented to servers that verify clients: both or neither. */
  clientCert: PemFile | undefined;
  clientKey: PemFile | undefined;
}

export interface Config {
  /** The file the values came from, or "(embedded default)". */
  source: string;
  packages: PackagesConfig;
  server: ServerConfig;
  warnings: string[];
}

interface KeySpec {
  description: string;
}

/** Every key of [PACKAGES], with what it allows; the README and example config say the same. */
export const PACKAGES_KEYS: Record<string, KeySpec> = {
  fetch_location: { description: 'comma-separated repositories clients fetch from, first tried first (local, http(s)://, ssh://, s3://, git); members joined by "|" form a group whose order is chosen per package by rendezvous hashing, so the group shares the packages' },
  upload_location: { description: 'comma-separated local paths, ssh:// or s3://bucket/prefix URLs the packager writes to' },
  custom_upload_location: { description: 'comma-separated locations for custom tests and kernels' },
  custom_download_location: { description: 'local staging folder for frontend uploads' },
  custom_max_age: { description: 'days after which upkeep deletes custom packages (default 40)' },
  minimum_free_space: { description: 'GB (10^9 bytes) an upload location must have free (default 1)' },
  serve_packages_from_autoserv: { description: 'true/false: autoserv serves packages no repository has (default true)' },
  client_dir: { description: 'the client tree the packager packs (default: the bundled example tree)' },
  client_cache_size: { description: 'GB (10^9 bytes) the client\'s package cache is trimmed to after each install, least recently used first, never a tarball in use (default 0: unbounded)' },
  compression: { description: 'bzip2 (default), gzip or zstd' },
  fetch_connect_timeout: { description: 'seconds to wait for a repository to accept a connection (default 5)' },
  fetch_timeout: { description: 'seconds a package download from one repository may take in all (default 600)' },
  fetch_retries: { description: 'further tries on a transient failure such as a reset or a 5xx (default 2; never on 404)' },
  fetch_max_size: { description: 'GB (10^9 bytes) a download may reach when the index gives no size (Autotest\'s packages.checksum alone; default 10)' },
  fetch_cooldown: { description: 'seconds a repository that failed slowly (connect timeout, stall) is skipped (default 60); instant failures never skip it' },
  fetch_ca_file: { description: 'PEM bundle of CAs trusted for https:// repositories and S3 endpoints, besides the system\'s (default: none)' },
  fetch_client_cert: { description: 'PEM client certificate for servers that verify clients; with fetch_client_key (default: none)' },
  fetch_client_key: { description: 'PEM private key (unencrypted) of fetch_client_cert (default: none)' },
  signing_key: { description: 'OpenSSH ed25519 private key (unencrypted) that signs packages.json as packages.json.sig after every change, or the .pub of one held by ssh-agent (SSH_AUTH_SOCK) (default: none, unsigned)' },
  trusted_keys: { description: 'allowed_signers file of the keys whose signature clients believe, for the namespace autotest-packages (default: none)' },
  require_signature: { description: 'true/false: a repository without a valid signature is passed over (default: true with trusted_keys; true needs trusted_keys)' },
  index_valid_days: { description: 'days a signed manifest is believed after signing, renewed by "autotest packager sign" (default: none, no expiry)' },
};

const BOOLEANS: Record<string, boolean> = {
  true: true, yes: true, on: true, '1': true,
  false: false, no: false, off: false, '0': false,
};

function badValue(section: string, entry: IniValue, key: string, allowed: string, detail?: string): never {
  // A secret is never echoed back, even when it is the value at fault.
  const found = entry.value === '' ? 'an empty value' : SECRET_KEYS.has(key) ? 'the value given' : `"${redactSecrets(entry.value)}"`;
  throw new AutotestError(
    'ERR_CONFIG',
    `${entry.file}:${entry.line}: [${section}] ${key} = ${found}${detail ? ` (${detail})` : ''}: allowed is ${allowed}`,
  );
}

const SECRET_KEYS = new Set(['upload_token']);

export function parseList(value: string): string[] {
  return value.split(/[,\n]/).map((item) => item.trim()).filter((item) => item !== '');
}

export const S3_KEYS: Record<string, KeySpec> = {
  endpoint: { description: 'http(s)://host[:port] of an S3-compatible server (Ceph radosgw, MinIO); empty: AWS' },
  region: { description: 'region to sign for (default: $AWS_REGION, else us-east-1)' },
  path_style: { description: 'true/false: bucket in the URL path, as Ceph and MinIO want (default: true with an endpoint, false without)' },
  checksum_mode: { description: 'when_required (default with an endpoint; what Ceph needs) or when_supported (default for AWS)' },
  profile: { description: 'profile of ~/.aws/credentials and ~/.aws/config to take credentials from (default: $AWS_PROFILE, else the SDK chain)' },
  part_size: { description: 'MB (2^20 bytes) per part of a multipart upload, >= 5 (default 16); smaller files go up in one PUT' },
  upload_concurrency: { description: 'parts of one upload in flight at once (default 4); memory is about part_size x this' },
};

/**
 * [S3] and its per-bucket overrides [S3:BUCKET]. Credentials are not keys here: they come
 * from the AWS SDK's chain (environment, shared credentials file, profile), never the config.
 */
export function readS3Config(doc: IniDocument, baseDirOf: (file: string) => string, env: NodeJS.ProcessEnv): { settingsFor: S3SettingsFor; warnings: string[] } {
  const readSection = (section: string, base: S3Settings): S3Settings => {
    const reader = createReader(doc, section, baseDirOf);
    const endpointEntry = reader.get('endpoint');
    let endpoint = base.endpoint;
    if (endpointEntry) {
      const text = endpointEntry.value.trim();
      if (text === '') endpoint = undefined;
      else {
        let url: URL | undefined;
        try {
          url = new URL(text);
        } catch {
          url = undefined;
        }
        if (!url || !/^https?:$/.test(url.protocol) || url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '') {
          badValue(section, endpointEntry, 'endpoint', 'http(s)://host[:port] with no user, password, query or fragment');
        }
        endpoint = url.origin + url.pathname.replace(/\/+$/, '');
      }
    }
    const withEndpoint = endpoint !== undefined;
    const modeEntry = reader.get('checksum_mode');
    let checksumMode = base.checksumMode;
    if (modeEntry) {
      const value = modeEntry.value.trim().toLowerCase();
      if (value !== 'when_required' && value !== 'when_supported') badValue(section, modeEntry, 'checksum_mode', 'when_required or when_supported');
      checksumMode = value;
    } else if (withEndpoint !== (base.endpoint !== undefined)) checksumMode = withEndpoint ? 'when_required' : 'when_supported';
    const regionEntry = reader.get('region');
    const region = regionEntry?.value.trim() ?? base.region;
    if (regionEntry && !/^[a-z0-9-]{1,64}$/i.test(region)) badValue(section, regionEntry, 'region', 'a region name such as us-east-1');
    const profileEntry = reader.get('profile');
    const profile = profileEntry ? profileEntry.value.trim() || undefined : base.profile;
    if (profileEntry && profile !== undefined && !/^[\w.@+-]{1,128}$/.test(profile)) badValue(section, profileEntry, 'profile', 'a profile name of letters, digits and ._@+-');
    const pathStyleDefault = reader.get('endpoint') ? withEndpoint : base.pathStyle;
    return {
      endpoint,
      region,
      pathStyle: readBoolean(reader, 'path_style', pathStyleDefault),
      checksumMode,
      profile,
      partSizeBytes: Math.round(readNumber(reader, 'part_size', base.partSizeBytes / 2 ** 20, { min: 5 }) * 2 ** 20),
      uploadConcurrency: readNumber(reader, 'upload_concurrency', base.uploadConcurrency, { min: 1, integer: true }),
    };
  };
  const defaults: S3Settings = {
    ...DEFAULT_S3_SETTINGS,
    region: env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? DEFAULT_S3_SETTINGS.region,
    profile: env.AWS_PROFILE === '' ? undefined : env.AWS_PROFILE,
  };
  const common = readSection('S3', defaults);
  const warnings = unknownKeys(doc, 'S3', S3_KEYS);
  const perBucket = new Map<string, S3Settings>();
  for (const section of doc.keys()) {
    if (!section.startsWith('S3:')) continue;
    perBucket.set(section.slice(3), readSection(section, common));
    warnings.push(...unknownKeys(doc, section, S3_KEYS));
  }
  return { settingsFor: (bucket) => perBucket.get(bucket) ?? common, warnings };
}

interface Reader {
  section: string;
  get(key: string): IniValue | undefined;
  baseDir(entry: IniValue): string;
}

function readLocations(reader: Reader, key: string, fallback: Location[], s3: S3SettingsFor): Location[] {
  return readLocationItems(reader, key, fallback, (item, baseDir) => parseLocation(item, baseDir, s3),
    'local paths, file://, http(s)://, ssh://[user@]host[:port]/path, s3://bucket/prefix or git URLs');
}

function readLocationItems<T>(reader: Reader, key: string, fallback: T[], parse: (item: string, baseDir: string) => T, allowed: string): T[] {
  const entry = reader.get(key);
  if (!entry) return fallback;
  return parseList(entry.value).map((item) => {
    try {
      return parse(item, reader.baseDir(entry));
    } catch (error) {
      badValue(reader.section, entry, key, allowed, error instanceof Error ? error.message : String(error));
    }
  });
}

/** The longest time a Node.js timer holds (2^31 - 1 ms, about 24.8 days); longer ones fire at once. */
const MAX_TIMER_SECONDS = Math.floor((2 ** 31 - 1) / 1000);

function readNumber(reader: Reader, key: string, fallback: number, opts: { min: number; max?: number; integer?: boolean }): number {
  const entry = reader.get(key);
  if (!entry) return fallback;
  const text = entry.value.trim();
  const n = Number(text);
  const allowed = `${opts.integer ? 'an integer' : 'a number'} >= ${opts.min}${opts.max === undefined ? '' : ` and <= ${opts.max}`}`;
  if (text === '' || !Number.isFinite(n) || n < opts.min || (opts.max !== undefined && n > opts.max) || (opts.integer === true && !Number.isInteger(n))) {
    badValue(reader.section, entry, key, allowed);
  }
  return n;
}

/** A duration in seconds that becomes a timer: bounded by what a timer can hold. */
function readMilliseconds(reader: Reader, key: string, fallbackSeconds: number, minSeconds: number): number {
  return Math.round(readNumber(reader, key, fallbackSeconds, { min: minSeconds, max: MAX_TIMER_SECONDS }) * 1000);
}

function readBoolean(reader: Reader, key: string, fallback: boolean): boolean {
  const entry = reader.get(key);
  if (!entry) return fallback;
  const value = BOOLEANS[entry.value.trim().toLowerCase()];
  if (value === undefined) badValue(reader.section, entry, key, 'true/false, yes/no, on/off or 1/0');
  return value;
}

function readPath(reader: Reader, key: string): string | undefined {
  const entry = reader.get(key);
  if (!entry) return undefined;
  const text = entry.value.trim();
  if (text === '' || /[\0-\x1f]/.test(text)) badValue(reader.section, entry, key, 'a folder path');
  return path.resolve(reader.baseDir(entry), text.startsWith('file://') ? new URL(text).pathname : text);
}

/** A file named by `key`, or undefined when the key is absent or empty. */
function readFileKey(reader: Reader, key: string): PemFile | undefined {
  const entry = reader.get(key);
  const text = entry?.value.trim() ?? '';
  if (!entry || text === '') return undefined;
  if (/[\0-\x1f]/.test(text)) badValue(reader.section, entry, key, 'a file path');
  return {
    file: path.resolve(reader.baseDir(entry), text.startsWith('file://') ? new URL(text).pathname : text),
    setAt: `${entry.file}:${entry.line.toString()}: [${reader.section}] ${key}`,
    pem: undefined,
  };
}

function readFetchTls(reader: Reader): FetchTls | undefined {
  const tls: FetchTls = { ca: readFileKey(reader, 'fetch_ca_file'), clientCert: readFileKey(reader, 'fetch_client_cert'), clientKey: readFileKey(reader, 'fetch_client_key') };
  for (const [key, other, set, otherSet] of [['fetch_client_cert', 'fetch_client_key', tls.clientCert, tls.clientKey], ['fetch_client_key', 'fetch_client_cert', tls.clientKey, tls.clientCert]] as const) {
    const entry = reader.get(key);
    if (set && !otherSet && entry) badValue(reader.section, entry, key, `a file path, together with ${other}`, `${other} is not set`);
  }
  return tls.ca || tls.clientCert ? tls : undefined;
}

function readFetchTrust(reader: Reader): FetchTrust | undefined {
  const file = readFileKey(reader, 'trusted_keys');
  // Empty means the default, as in the example config, so that setting trusted_keys alone turns it on.
  const requireEntry = reader.get('require_signature');
  const required = requireEntry?.value.trim() === '' ? file !== undefined : readBoolean(reader, 'require_signature', file !== undefined);
  if (required && !file && requireEntry) {
    badValue(reader.section, requireEntry, 'require_signature', 'false, or true together with trusted_keys', 'trusted_keys is not set: no signature could ever be verified');
  }
  return file && { file: { file: file.file, setAt: file.setAt }, required, keys: undefined, text: undefined };
}

function createReader(doc: IniDocument, section: string, baseDirOf: (file: string) => string): Reader {
  return { section, get: (key) => getIniValue(doc, section, key), baseDir: (entry) => baseDirOf(entry.file) };
}

function unknownKeys(doc: IniDocument, section: string, known: Record<string, KeySpec>): string[] {
  return sectionKeys(doc, section)
    .filter((key) => !(key in known))
    .map((key) => {
      const entry = doc.get(section)?.get(key);
      const near = closestMatch(key, Object.keys(known));
      const help = near === undefined ? `known: ${Object.keys(known).join(', ')}` : `did you mean "${near}"?`;
      return `${entry?.file ?? '?'}:${entry?.line ?? 0}: unknown key "${key}" in [${section}] is ignored (${help})`;
    });
}

/**
 * Repositories served through the caching front (see server/cache.ts): every fetch scheme but
 * git, several of them tried in order, `|` groups as in fetch_location.
 */
export interface CachedUpstreams {
  kind: 'cached';
  upstreams: FetchLocation[];
  text: string;
}

/**
 * What `autotest serve` can serve at /packages/NAME/: a folder, read as it is on every
 * request, or upstreams (an S3 prefix alone among them) served through the cache.
 */
export type ServedLocation = Extract<Location, { kind: 'local' }> | CachedUpstreams;

/** The [SERVER] section: what `autotest serve` listens on and serves. */
export interface ServerConfig {
  listenAddress: string;
  port: number;
  /** Served at /packages/builtin/: builtin_dir, else the first local or S3 upload_location. */
  builtin: ServedLocation | undefined;
  /** Served at /packages/custom/: custom_dir, else the first local or S3 custom_upload_location. */
  custom: ServedLocation | undefined;
  /** Bearer token for uploads and deletes; none means both are refused. */
  uploadToken: string | undefined;
  maxUploadBytes: number;
  /** Entries (files, folders, links) an uploaded package may hold. */
  maxUploadEntries: number;
  /** Bytes an uploaded package may unpack to in its trial extraction. */
  maxUploadExpandedBytes: number;
  /** Uploads received and checked at once; one more is answered 503 with Retry-After. */
  maxConcurrentUploads: number;
  /** An upload that receives fewer than minBytesPerSecond x windowMs / 1000 bytes in any window is cut. */
  uploadMinRate: { bytesPerSecond: number; windowMs: number };
  /** pino level of the request log. */
  logLevel: string;
  /** The caching front's store, shared by every cached served folder. */
  cache: ServerCacheConfig;
}

export interface ServerCacheConfig {
  dir: string;
  /** Least recently used entries go beyond this (never one being served). */
  sizeBytes: number;
  /** How long an upstream index is reused before it is read again. */
  indexMaxAgeMs: number;
}

export const SERVER_KEYS: Record<string, KeySpec> = {
  listen_address: { description: 'address autotest serve listens on (default 127.0.0.1)' },
  port: { description: 'port autotest serve listens on (default 8080; 0 picks a free one)' },
  builtin_dir: { description: 'what is served at /packages/builtin/: a folder, served as it is; or s3://, http(s)://, ssh:// upstreams, or several of any (comma list, "|" groups), served through cache_dir (default: the first local or S3 upload_location)' },
  custom_dir: { description: 'what is served at /packages/custom/, as builtin_dir (default: the first local or S3 custom_upload_location)' },
  cache_dir: { description: 'folder of the caching front, shared by builtin_dir and custom_dir when they name upstreams (default: var/serve_cache under the working folder, beside the default repositories)' },
  cache_size: { description: 'GB (10^9 bytes) the caching front keeps, least recently used beyond it, never a file being served (default 10)' },
  index_max_age: { description: 'seconds an upstream index is reused by the caching front before it is read again (default 60)' },
  upload_token: { description: 'bearer token that uploads and deletes need ($AUTOTEST_UPLOAD_TOKEN overrides; none: both refused)' },
  max_upload_size: { description: 'MB (10^6 bytes) an uploaded package may have (default 1024)' },
  max_upload_entries: { description: 'entries (files, folders, links) an uploaded package may hold (default 100000)' },
  max_upload_expanded_size: { description: 'MB (10^6 bytes) an uploaded package may unpack to (default 4000)' },
  max_concurrent_uploads: { description: 'uploads received and checked at once; more are answered 503 with Retry-After (default 4)' },
  upload_min_rate: { description: 'KB/s (1000 bytes) an upload must average over every upload_rate_window, else it is cut (default 1)' },
  upload_rate_window: { description: 'seconds over which upload_min_rate is measured (default 60)' },
  log_level: { description: 'request log level: trace, debug, info (default), warn, error, fatal or silent' },
};

/** The example config's upload_token: a server that accepted it would take uploads from anyone who read the example. */
export const PLACEHOLDER_UPLOAD_TOKEN = 'change-me-to-a-long-random-string';
const MIN_TOKEN_LENGTH = 16;
const TOKEN_RULE = `at least ${MIN_TOKEN_LENGTH.toString()} characters without spaces or quotes, of at least 4 different ones, not the example's placeholder`;
const TOKEN_HINT = 'make one with: openssl rand -hex 24';

function uploadTokenFault(token: string): string | undefined {
  // Quoted or in capitals it is still the placeholder (ConfigParser keeps quotes in a value).
  if (token.replace(/^(["'])(.*)\1$/, '$2').toLowerCase() === PLACEHOLDER_UPLOAD_TOKEN) return "the example config's placeholder";
  if (/^["']/.test(token)) return 'it starts with a quote, which ConfigParser keeps as part of the token';
  if (token.length < MIN_TOKEN_LENGTH) return `${token.length.toString()} characters`;
  if (/\s/.test(token)) return 'it holds a space';
  if (new Set(token).size < 4) return 'it repeats fewer than 4 different characters';
  return undefined;
}

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

const ADDRESS_RE = /^(?:[0-9.]+|\[?[0-9A-Fa-f:.]+\]?|[A-Za-z0-9.-]+)$/;

export function readServerConfig(doc: IniDocument, baseDirOf: (file: string) => string, packages: PackagesConfig, env: NodeJS.ProcessEnv): { server: ServerConfig; warnings: string[] } {
  const section = 'SERVER';
  const reader = createReader(doc, section, baseDirOf);
  const addressEntry = reader.get('listen_address');
  const listenAddress = addressEntry?.value.trim() ?? '127.0.0.1';
  if (addressEntry && !ADDRESS_RE.test(listenAddress)) badValue(section, addressEntry, 'listen_address', 'an IP address or a host name');
  const servable = (location: Location): location is Extract<Location, { kind: 'local' | 's3' }> => location.kind === 'local' || location.kind === 's3';
  // A folder is read on every request; an S3 prefix goes through the cache, where each object
  // is fetched (signed) once however many machines ask, and the server's own uploads and
  // deletes drop its cached index (see uploads.ts).
  const asServed = (location: Extract<Location, { kind: 'local' | 's3' }>): ServedLocation =>
    location.kind === 'local' ? location : { kind: 'cached', upstreams: [location], text: location.text };
  const allowed = 'a folder path or s3://bucket/prefix, or comma-separated http(s)://, ssh://, s3:// or local upstreams ("|" groups allowed; no git)';
  const served = (key: string, fallback: Location[]): ServedLocation | undefined => {
    const entry = reader.get(key);
    if (!entry) {
      const found = fallback.find(servable);
      return found && asServed(found);
    }
    let upstreams: FetchLocation[];
    try {
      upstreams = parseList(entry.value).map((item) => parseFetchLocation(item, reader.baseDir(entry), packages.s3));
    } catch (error) {
      badValue(section, entry, key, allowed, error instanceof Error ? error.message : String(error));
    }
    const [only] = upstreams;
    if (!only) badValue(section, entry, key, allowed);
    const git = flattenFetchLocations(upstreams).find((location) => location.kind === 'git');
    if (git) badValue(section, entry, key, allowed, `"${redactSecrets(git.text)}" is a git repository`);
    if (upstreams.length === 1 && only.kind !== 'group' && servable(only)) return asServed(only);
    return { kind: 'cached', upstreams, text: upstreams.map((location) => location.text).join(', ') };
  };
  const tokenEntry = reader.get('upload_token');
  const token = env.AUTOTEST_UPLOAD_TOKEN ?? tokenEntry?.value.trim();
  const tokenFault = token === undefined || token === '' ? undefined : uploadTokenFault(token);
  if (tokenFault !== undefined) {
    if (env.AUTOTEST_UPLOAD_TOKEN !== undefined) {
      throw new AutotestError('ERR_CONFIG', `$AUTOTEST_UPLOAD_TOKEN: ${tokenFault}: allowed is ${TOKEN_RULE}`, { hint: TOKEN_HINT });
    }
    if (tokenEntry) badValue(section, tokenEntry, 'upload_token', TOKEN_RULE, tokenFault);
  } else if (tokenEntry && env.AUTOTEST_UPLOAD_TOKEN === undefined && token === '') badValue(section, tokenEntry, 'upload_token', TOKEN_RULE);
  const levelEntry = reader.get('log_level');
  const logLevel = levelEntry?.value.trim().toLowerCase() ?? 'info';
  if (levelEntry && !LOG_LEVELS.includes(logLevel)) badValue(section, levelEntry, 'log_level', LOG_LEVELS.join(', '));
  const port = readNumber(reader, 'port', 8080, { min: 0, integer: true });
  const portEntry = reader.get('port');
  if (portEntry && port > 65535) badValue(section, portEntry, 'port', 'a port number 0-65535');
  return {
    server: {
      logLevel,
      cache: {
        dir: readPath(reader, 'cache_dir') ?? path.resolve('var', 'serve_cache'),
        sizeBytes: Math.round(readNumber(reader, 'cache_size', 10, { min: 0.000001 }) * 1e9),
        indexMaxAgeMs: readMilliseconds(reader, 'index_max_age', 60, 0),
      },
      listenAddress: listenAddress.replace(/^\[|\]$/g, ''),
      port,
      builtin: served('builtin_dir', packages.uploadLocations),
      custom: served('custom_dir', packages.customUploadLocations),
      uploadToken: token === '' ? undefined : token,
      maxUploadBytes: Math.round(readNumber(reader, 'max_upload_size', 1024, { min: 0.001 }) * 1e6),
      maxUploadEntries: readNumber(reader, 'max_upload_entries', 100_000, { min: 1, integer: true }),
      maxUploadExpandedBytes: Math.round(readNumber(reader, 'max_upload_expanded_size', 4000, { min: 0.001 }) * 1e6),
      maxConcurrentUploads: readNumber(reader, 'max_concurrent_uploads', 4, { min: 1, max: 1000, integer: true }),
      uploadMinRate: {
        bytesPerSecond: Math.round(readNumber(reader, 'upload_min_rate', 1, { min: 0 }) * 1000),
        windowMs: readMilliseconds(reader, 'upload_rate_window', 60, 1),
      },
    },
    warnings: unknownKeys(doc, section, SERVER_KEYS),
  };
}

/**
 * Validates [PACKAGES]. `baseDirOf` tells the folder relative paths of a value are resolved
 * against: the folder of the file the value came from.
 */
export function readPackagesConfig(doc: IniDocument, baseDirOf: (file: string) => string, env: NodeJS.ProcessEnv = process.env): { packages: PackagesConfig; warnings: string[] } {
  const section = 'PACKAGES';
  const reader = createReader(doc, section, baseDirOf);
  const { settingsFor: s3, warnings: s3Warnings } = readS3Config(doc, baseDirOf, env);
  const warnings = [...unknownKeys(doc, section, PACKAGES_KEYS), ...s3Warnings];

  const uploadLocations = readLocations(reader, 'upload_location', [], s3);
  const customUploadLocations = readLocations(reader, 'custom_upload_location', [], s3);
  const compressionEntry = reader.get('compression');
  let compression: Compression = 'bzip2';
  if (compressionEntry) {
    const value = compressionEntry.value.trim().toLowerCase();
    if (!(COMPRESSIONS as readonly string[]).includes(value)) badValue(section, compressionEntry, 'compression', COMPRESSIONS.join(', '));
    compression = value as Compression;
  }
  const downloadEntry = reader.get('custom_download_location');
  const customDownloadLocation = readPath(reader, 'custom_download_location');
  if (downloadEntry && customDownloadLocation === undefined) badValue(section, downloadEntry, 'custom_download_location', 'a folder path');

  const signingKey = readFileKey(reader, 'signing_key');
  const validDaysEntry = reader.get('index_valid_days');
  const packages: PackagesConfig = {
    fetchLocations: readLocationItems(reader, 'fetch_location', [], (item, baseDir) => parseFetchLocation(item, baseDir, s3),
      'local paths, file://, http(s)://, ssh://[user@]host[:port]/path, s3://bucket/prefix or git URLs, one by one or joined by "|" in groups'),
    uploadLocations,
    customUploadLocations,
    customDownloadLocation: customDownloadLocation ?? path.resolve('custom_packages'),
    customMaxAgeDays: readNumber(reader, 'custom_max_age', 40, { min: 0 }),
    minimumFreeSpaceBytes: Math.round(readNumber(reader, 'minimum_free_space', 1, { min: 0 }) * 1e9),
    servePackagesFromAutoserv: readBoolean(reader, 'serve_packages_from_autoserv', true),
    clientDir: readPath(reader, 'client_dir'),
    clientCacheSizeBytes: Math.round(readNumber(reader, 'client_cache_size', 0, { min: 0 }) * 1e9),
    compression,
    fetch: {
      connectTimeoutMs: readMilliseconds(reader, 'fetch_connect_timeout', 5, 0.01),
      timeoutMs: readMilliseconds(reader, 'fetch_timeout', 600, 0.01),
      retries: readNumber(reader, 'fetch_retries', 2, { min: 0, integer: true }),
      cooldownMs: readMilliseconds(reader, 'fetch_cooldown', 60, 0),
      maxSizeBytes: Math.round(readNumber(reader, 'fetch_max_size', 10, { min: 0.000001 }) * 1e9),
      tls: readFetchTls(reader),
      trust: readFetchTrust(reader),
    },
    s3,
    signingKey: signingKey && { file: signingKey.file, setAt: signingKey.setAt },
    indexValidDays: validDaysEntry && validDaysEntry.value.trim() !== '' ? readNumber(reader, 'index_valid_days', 0, { min: 0.001 }) : undefined,
  };
  for (const [key, list] of [['upload_location', uploadLocations], ['custom_upload_location', customUploadLocations]] as const) {
    const wrong = list.find((loc) => loc.kind === 'http' || loc.kind === 'git');
    const entry = reader.get(key);
    if (wrong && entry) badValue(section, entry, key, 'local paths, ssh:// or s3:// URLs (http and git locations are read-only)', `"${wrong.text}"`);
  }
  return { packages, warnings };
}
