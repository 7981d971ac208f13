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

/**
 * [S3] and its per-bucket overrides [S3:BUCKET]. Credentials are not keys here: they come
 * from the AWS SDK's chain (environment, shared credentials file, profile), never the config.
 */
export function readS3Config(doc: IniDocument, baseDirOf: (file: string) => string, env: NodeJS.ProcessEnv): { settingsFor: S3SettingsFor; warnings: string[] } {
  const options: ReaderOptions = { baseDirOf, s3: () => DEFAULT_S3_SETTINGS, env };
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
  const warnings = unknownKeys(doc, 'S3');
  const perBucket = new Map<string, S3Settings>();
  for (const section of doc.keys()) {
    if (!section.startsWith('S3:')) continue;
    perBucket.set(section.slice(3), readS3Section(doc, section, common, options));
    warnings.push(...unknownKeys(doc, section));
  }
  return { settingsFor: (bucket) => perBucket.get(bucket) ?? common, warnings };
}
