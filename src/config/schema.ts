import type { IniDocument } from './ini.js';
import { PACKAGES_KEYS } from './keys.js';
import type { FetchLocation, Location, S3SettingsFor } from './location.js';
import { createSectionReader, type SectionReader } from './reader.js';
import { readS3Config } from './s3-section.js';
import { unknownKeys } from './suggest.js';
import type { Compression } from '../packages/compression.js';

export { COMPRESSIONS, type Compression } from '../packages/compression.js';

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
  /** require_signature: without a valid signature a repository is passed over. */
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

type PackagesReader = SectionReader<typeof PACKAGES_KEYS>;

function readFetchTls(reader: PackagesReader): FetchTls | undefined {
  const tls: FetchTls = { ca: reader.read('fetch_ca_file'), clientCert: reader.read('fetch_client_cert'), clientKey: reader.read('fetch_client_key') };
  if (tls.clientCert && !tls.clientKey) reader.refuse('fetch_client_cert', 'a file path, together with fetch_client_key', 'fetch_client_key is not set');
  if (tls.clientKey && !tls.clientCert) reader.refuse('fetch_client_key', 'a file path, together with fetch_client_cert', 'fetch_client_cert is not set');
  return tls.ca || tls.clientCert ? tls : undefined;
}

function readFetchTrust(reader: PackagesReader): FetchTrust | undefined {
  const file = reader.read('trusted_keys');
  // Empty means the default, as in the example config, so that setting trusted_keys alone turns it on.
  const required = reader.read('require_signature') ?? file !== undefined;
  if (required && !file) {
    reader.refuse('require_signature', 'false, or true together with trusted_keys', 'trusted_keys is not set: no signature could ever be verified');
  }
  return file && { file: { file: file.file, setAt: file.setAt }, required, keys: undefined, text: undefined };
}

function readFetchSettings(reader: PackagesReader): FetchSettings {
  return {
    connectTimeoutMs: reader.read('fetch_connect_timeout'),
    timeoutMs: reader.read('fetch_timeout'),
    retries: reader.read('fetch_retries'),
    cooldownMs: reader.read('fetch_cooldown'),
    maxSizeBytes: reader.read('fetch_max_size'),
    tls: readFetchTls(reader),
    trust: readFetchTrust(reader),
  };
}

/**
 * Validates [PACKAGES] (and [S3], which its s3:// locations take their settings from).
 * `baseDirOf` tells the folder relative paths of a value are resolved against: the folder of
 * the file the value came from.
 */
export function readPackagesConfig(
  doc: IniDocument,
  baseDirOf: (file: string) => string,
  env: NodeJS.ProcessEnv = process.env,
): { packages: PackagesConfig; warnings: string[] } {
  const { settingsFor: s3, warnings: s3Warnings } = readS3Config(doc, baseDirOf, env);
  const reader = createSectionReader(doc, 'PACKAGES', PACKAGES_KEYS, { baseDirOf, s3, env });
  const signingKey = reader.read('signing_key');
  const packages: PackagesConfig = {
    fetchLocations: reader.read('fetch_location') ?? [],
    uploadLocations: reader.read('upload_location') ?? [],
    customUploadLocations: reader.read('custom_upload_location') ?? [],
    customDownloadLocation: reader.read('custom_download_location'),
    customMaxAgeDays: reader.read('custom_max_age'),
    minimumFreeSpaceBytes: reader.read('minimum_free_space'),
    servePackagesFromAutoserv: reader.read('serve_packages_from_autoserv'),
    clientDir: reader.read('client_dir'),
    clientCacheSizeBytes: reader.read('client_cache_size'),
    compression: reader.read('compression'),
    fetch: readFetchSettings(reader),
    s3,
    signingKey: signingKey && { file: signingKey.file, setAt: signingKey.setAt },
    indexValidDays: reader.read('index_valid_days'),
  };
  return { packages, warnings: [...unknownKeys(doc, 'PACKAGES'), ...s3Warnings] };
}
