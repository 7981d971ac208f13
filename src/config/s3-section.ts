import type { IniDocument } from './ini.js';
import { S3_KEYS } from './keys.js';
import { DEFAULT_S3_SETTINGS, type S3Settings, type S3SettingsFor } from './location.js';
import { createSectionReader, type ReaderOptions } from './reader.js';
import { unknownKeys } from './suggest.js';

/**
 * The settings of one [S3] or [S3:BUCKET] section over `base`, what it inherits: the
 * declared defaults for [S3], the settings of [S3] for [S3:BUCKET]. A section that sets
 * endpoint also turns the defaults of path_style and checksum_mode to suit it.
 */
function readS3Section(doc: IniDocument, section: string, base: S3Settings, options: ReaderOptions): S3Settings {
  const reader = createSectionReader(doc, section, S3_KEYS, options);
  const endpointSet = reader.entry('endpoint') !== undefined;
  const endpoint = reader.readOr('endpoint', base.endpoint);
  const withEndpoint = endpoint !== undefined;
  return {
    endpoint,
    region: reader.readOr('region', base.region),
    pathStyle: reader.readOr('path_style', endpointSet ? withEndpoint : base.pathStyle),
    checksumMode: reader.readOr('checksum_mode', endpointSet ? (withEndpoint ? 'when_required' : 'when_supported') : base.checksumMode),
    profile: reader.readOr('profile', base.profile),
    partSizeBytes: reader.readOr('part_size', base.partSizeBytes),
    uploadConcurrency: reader.readOr('upload_concurrency', base.uploadConcurrency),
  };
}

/** [S3] and every [S3:BUCKET] over the declared defaults, which `options.env` may set. */
function readS3Sections(doc: IniDocument, options: ReaderOptions): { common: S3Settings; perBucket: Map<string, S3Settings> } {
  const defaults = createSectionReader(new Map(), 'S3', S3_KEYS, options);
  // Without an endpoint: AWS, which wants the bucket in the host name and takes checksum trailers.
  const declared: S3Settings = {
    endpoint: undefined,
    pathStyle: false,
    checksumMode: 'when_supported',
    region: defaults.read('region'),
    profile: defaults.read('profile'),
    partSizeBytes: defaults.read('part_size'),
    uploadConcurrency: defaults.read('upload_concurrency'),
  };
  const common = readS3Section(doc, 'S3', declared, options);
  const perBucket = new Map<string, S3Settings>();
  for (const section of doc.keys()) {
    if (section.startsWith('S3:')) perBucket.set(section.slice(3), readS3Section(doc, section, common, options));
  }
  return { common, perBucket };
}

/**
 * [S3] and its per-bucket overrides [S3:BUCKET]. Credentials are not keys here: they come
 * from the AWS SDK's chain (environment, shared credentials file, profile), never the config.
 * The file's values are checked at load; the environment's (AWS_REGION, AWS_PROFILE) only
 * once an s3:// location asks for its settings: a variable set for other tools must not stop
 * a command that never talks to S3.
 */
export function readS3Config(
  doc: IniDocument,
  baseDirOf: (file: string) => string,
  env: NodeJS.ProcessEnv,
): { settingsFor: S3SettingsFor; warnings: string[] } {
  const options = (from: NodeJS.ProcessEnv): ReaderOptions => ({ baseDirOf, s3: () => DEFAULT_S3_SETTINGS, env: from });
  readS3Sections(doc, options({}));
  const warnings = [...doc.keys()].filter((section) => section === 'S3' || section.startsWith('S3:')).flatMap((section) => unknownKeys(doc, section));
  let read: ReturnType<typeof readS3Sections> | undefined;
  return {
    settingsFor: (bucket) => {
      read ??= readS3Sections(doc, options(env));
      return read.perBucket.get(bucket) ?? read.common;
    },
    warnings,
  };
}
