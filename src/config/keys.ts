import { COMPRESSIONS } from '../packages/compression.js';
import * as kinds from './kinds.js';
import type { ValueKind } from './kinds.js';

/**
 * A config key, declared once: the readers take its parsing and default from here, the
 * README's key tables are written from here (npm run docs:config), and a test checks the
 * example config against these tables.
 */
export interface KeyDeclaration<T = unknown> {
  kind: ValueKind<T>;
  /** The value as written in an ini file, read through `kind` when the key is absent; undefined: none. */
  default: string | undefined;
  /** Said after the default in the README: what it means ("(unbounded)"), or after "none:". */
  defaultNote?: string;
  /** Environment variables whose value, when set and not empty, is the default instead (first set wins). */
  defaultFromEnv?: readonly string[];
  /** The default when it depends on other keys: the reader works it out, this says it for the README. */
  defaultRule?: string;
  /** What the embedded config gives when there is no config file at all. */
  embedded?: string;
  /** Never echoed in a message, not even when it is the value at fault. */
  secret?: boolean;
  /** One line of Markdown: the README table's "meaning". */
  doc: string;
}

export const PACKAGES_KEYS = {
  fetch_location: {
    kind: kinds.fetchLocations,
    default: undefined,
    embedded: 'var/packages/builtin, var/packages/custom',
    doc: 'repositories clients fetch from, in order: `http(s)://`, local path or `file://`, `ssh://[user@]host[:port]/path`, `s3://bucket/prefix`, git URLs with optional `:branch`; members joined by `|` form a group whose order is chosen per package by rendezvous hashing (see Fetching)',
  },
  upload_location: {
    kind: kinds.uploadLocations,
    default: undefined,
    embedded: 'var/packages/builtin',
    doc: 'where the packager publishes, all in parallel: local paths, `ssh://[user@]host[:port]/path` and `s3://bucket/prefix`',
  },
  custom_upload_location: {
    kind: kinds.uploadLocations,
    default: undefined,
    embedded: 'var/packages/custom',
    doc: 'where custom tests and kernels go',
  },
  custom_download_location: {
    kind: kinds.folder,
    default: 'custom_packages',
    defaultNote: 'under the working folder',
    embedded: 'var/custom_packages',
    doc: 'local staging folder for frontend uploads',
  },
  custom_max_age: { kind: kinds.days(0), default: '40', doc: 'days before upkeep deletes custom packages' },
  minimum_free_space: {
    kind: kinds.gigabytes(0),
    default: '1',
    doc: 'GB (10^9 bytes) an upload location must have free, else refused before anything is written',
  },
  serve_packages_from_autoserv: { kind: kinds.boolean, default: 'true', doc: 'autoserv serves packages no repository has' },
  client_dir: { kind: kinds.folder, default: undefined, defaultNote: 'the bundled `example/client`', doc: 'the client tree to pack' },
  client_cache_size: {
    kind: kinds.gigabytes(0),
    default: '0',
    defaultNote: '(unbounded)',
    doc: "GB (10^9 bytes) the client's package cache is trimmed to after each install, least recently used first; a tarball another install on the machine is using stays, and installed packages are never touched",
  },
  compression: {
    kind: kinds.oneOf(COMPRESSIONS),
    default: 'bzip2',
    doc: '`bzip2` (lbzip2, pbzip2 or bzip2, first found), `gzip`, `zstd`',
  },
  fetch_connect_timeout: { kind: kinds.seconds(0.01), default: '5', doc: 'seconds a repository has to accept a connection' },
  fetch_timeout: {
    kind: kinds.seconds(0.01),
    default: '600',
    doc: 'seconds a package download from one repository may take in all, every try and pause included (a stall of 30 s cuts a try too)',
  },
  fetch_retries: {
    kind: kinds.integer(0),
    default: '2',
    doc: 'further tries after a transient failure (reset, cut body, 5xx, stall), with growing pauses; never after a 404 or a checksum mismatch',
  },
  fetch_max_size: {
    kind: kinds.gigabytes(0.000001),
    default: '10',
    doc: "GB (10^9 bytes) one download may reach when the index gives no size (an Autotest repository with `packages.checksum` alone); a download is also bounded by the package cache's free space, and by the index's size where it has one",
  },
  fetch_cooldown: {
    kind: kinds.seconds(0),
    default: '60',
    doc: 'seconds a repository that failed slowly (connect timeout, stall, `fetch_timeout`) is skipped, by every install on the machine; an instant failure (refused, TLS, HTTP error, S3 AccessDenied/NoSuchBucket, SSH authentication) never skips it',
  },
  fetch_ca_file: {
    kind: kinds.file,
    default: undefined,
    doc: "PEM bundle trusted for `https://` repositories and an `https://` S3 endpoint (reads, and the packager's and server's writes), besides the system's CAs; autoserv sends it to its hosts",
  },
  fetch_client_cert: {
    kind: kinds.file,
    default: undefined,
    doc: 'PEM client certificate for servers that verify clients (with `fetch_client_key`); for autoserv, a path on each host',
  },
  fetch_client_key: {
    kind: kinds.file,
    default: undefined,
    doc: 'PEM private key of `fetch_client_cert`, without a passphrase; for autoserv, a path on each host (never copied)',
  },
  signing_key: {
    kind: kinds.file,
    default: undefined,
    defaultNote: 'unsigned',
    doc: 'OpenSSH ed25519 private key (no passphrase) that signs `packages.json` as `packages.json.sig` after every index change, or the public key (`.pub`) of one held by `ssh-agent` (`SSH_AUTH_SOCK`), which then signs (see "Signed repositories")',
  },
  index_valid_days: {
    // An expiry date must be one a Date can hold (and a manifest a reader will meet): 100 years at most.
    kind: kinds.optional(kinds.days(0.001, 36525)),
    default: undefined,
    defaultNote: 'no expiry',
    doc: 'days a signed manifest is believed after signing (its `expires`); renewed by `autotest packager sign`',
  },
  trusted_keys: {
    kind: kinds.file,
    default: undefined,
    doc: 'allowed_signers file of the ed25519 keys clients believe for the namespace `autotest-packages` (any principal; several for a rotation)',
  },
  require_signature: {
    kind: kinds.optional(kinds.boolean),
    default: undefined,
    defaultRule: 'true with `trusted_keys`, else false',
    doc: 'a repository without a valid signature by a trusted key is passed over; true without `trusted_keys` is an error',
  },
} satisfies Record<string, KeyDeclaration>;

/** [S3], and [S3:BUCKET] whose keys override it for one bucket. */
export const S3_KEYS = {
  endpoint: {
    kind: kinds.endpoint,
    default: undefined,
    defaultNote: 'AWS',
    doc: '`http(s)://host[:port]` of an S3-compatible server (radosgw, MinIO); empty for AWS',
  },
  region: {
    kind: kinds.matching(/^[a-z0-9-]{1,64}$/i, 'a region name such as us-east-1'),
    default: 'us-east-1',
    defaultFromEnv: ['AWS_REGION', 'AWS_DEFAULT_REGION'],
    doc: 'the region requests are signed for (radosgw and MinIO accept any)',
  },
  path_style: {
    kind: kinds.boolean,
    default: undefined,
    defaultRule: 'true with an `endpoint`, false without',
    doc: 'bucket in the URL path (Ceph, MinIO) instead of the host name (AWS)',
  },
  checksum_mode: {
    kind: kinds.oneOf(['when_required', 'when_supported'] as const, 'when_required or when_supported'),
    default: undefined,
    defaultRule: '`when_required` with an `endpoint`, `when_supported` without',
    doc: "`when_required` (what Ceph needs: with the SDK's default a streamed PUT gets 411) or `when_supported` (AWS)",
  },
  profile: {
    kind: kinds.optional(kinds.matching(/^[\w.@+-]{1,128}$/, 'a profile name of letters, digits and ._@+-')),
    default: undefined,
    defaultFromEnv: ['AWS_PROFILE'],
    defaultNote: "the SDK's default chain",
    doc: 'profile of `~/.aws/credentials` / `~/.aws/config` to take the keys from',
  },
  part_size: {
    kind: kinds.mebibytes(5),
    default: '16',
    doc: 'MB (2^20 bytes, >= 5) per part of a multipart upload; smaller files go up in one PUT',
  },
  upload_concurrency: {
    kind: kinds.integer(1),
    default: '4',
    doc: 'parts of one upload in flight; an upload holds about `part_size` x this in memory',
  },
} satisfies Record<string, KeyDeclaration>;

export const SERVER_KEYS = {
  listen_address: { kind: kinds.address, default: '127.0.0.1', doc: 'address to listen on' },
  port: { kind: kinds.integer(0, 65535), default: '8080', doc: 'port (0: a free one)' },
  builtin_dir: {
    kind: kinds.servedLocation,
    default: undefined,
    defaultRule: 'the first local or S3 `upload_location`',
    doc: 'folder or `s3://bucket/prefix` served at `/packages/builtin/`; or upstreams (http(s)://, ssh://, s3://, local; comma list, `|` groups; no git) served through the caching front',
  },
  custom_dir: {
    kind: kinds.servedLocation,
    default: undefined,
    defaultRule: 'the first local or S3 `custom_upload_location`',
    doc: 'the same for `/packages/custom/`',
  },
  cache_dir: {
    kind: kinds.folder,
    default: 'var/serve_cache',
    defaultNote: 'under the working folder',
    doc: 'folder of the caching front, shared by both',
  },
  cache_size: {
    kind: kinds.gigabytes(0.000001),
    default: '10',
    doc: 'GB (10^9 bytes) the caching front keeps; least recently used beyond it, never an entry being served',
  },
  index_max_age: { kind: kinds.seconds(0), default: '60', doc: 'seconds an upstream index is reused before it is read again' },
  upload_token: {
    kind: kinds.uploadToken,
    default: undefined,
    defaultNote: 'uploads refused',
    secret: true,
    doc: `bearer token for uploads and deletes, 16+ characters without spaces (\`openssl rand -hex 24\`); the example config's placeholder \`${kinds.PLACEHOLDER_UPLOAD_TOKEN}\` is refused; \`$AUTOTEST_UPLOAD_TOKEN\` overrides`,
  },
  max_upload_size: { kind: kinds.megabytes(0.001), default: '1024', doc: 'MB (10^6 bytes) an upload may have' },
  max_upload_entries: {
    kind: kinds.integer(1),
    default: '100000',
    doc: 'entries (files, folders, links) an uploaded package may hold; past it: 413 naming the key',
  },
  max_upload_expanded_size: {
    kind: kinds.megabytes(0.001),
    default: '4000',
    doc: 'MB (10^6 bytes) an uploaded package may unpack to in its trial extraction; past it: 413 naming the key',
  },
  max_concurrent_uploads: {
    kind: kinds.integer(1, 1000),
    default: '4',
    doc: 'uploads received and checked at once; one more gets 503 with `Retry-After` before its body is read',
  },
  upload_min_rate: {
    kind: kinds.kilobytesPerSecond(0),
    default: '1',
    doc: 'KB/s (1000 bytes) an upload must average over every `upload_rate_window`, else it is cut with 408 and its staging removed (a trickling client cannot hold a slot; a large upload over a slow link stays fine); 0 turns it off',
  },
  upload_rate_window: { kind: kinds.seconds(1), default: '60', doc: 'seconds over which `upload_min_rate` is measured' },
  log_level: {
    kind: kinds.oneOf(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const),
    default: 'info',
    doc: 'request log level: trace, debug, info, warn, error, fatal, silent',
  },
} satisfies Record<string, KeyDeclaration>;

/** The sections of ours, each with its keys; [S3:BUCKET] sections take the keys of [S3]. */
export const CONFIG_KEYS = { PACKAGES: PACKAGES_KEYS, S3: S3_KEYS, SERVER: SERVER_KEYS } as const;

export type ConfigSection = keyof typeof CONFIG_KEYS;

/** The declarations of a section ([S3:BUCKET] is read as [S3]), or undefined for a section not ours. */
export function keysOfSection(section: string): Record<string, KeyDeclaration> | undefined {
  const name = section.startsWith('S3:') ? 'S3' : section;
  return Object.hasOwn(CONFIG_KEYS, name) ? CONFIG_KEYS[name as ConfigSection] : undefined;
}

/** The ini text of the embedded config: each key's `embedded` value, section by section. */
export function renderEmbeddedConfig(): string {
  const sections: Record<string, Record<string, KeyDeclaration>> = CONFIG_KEYS;
  return Object.entries(sections)
    .flatMap(([section, keys]) => {
      const lines = Object.entries(keys).flatMap(([name, declaration]) => (declaration.embedded === undefined ? [] : [`${name}: ${declaration.embedded}`]));
      return lines.length === 0 ? [] : [`[${section}]`, ...lines, ''];
    })
    .join('\n');
}
