import { AutotestError } from '../errors.js';
import type { IniDocument } from './ini.js';
import { asServed, isServable, uploadToken, uploadTokenFault } from './kinds.js';
import { SERVER_KEYS } from './keys.js';
import type { Location } from './location.js';
import { createSectionReader, type SectionReader } from './reader.js';
import type { PackagesConfig, ServedLocation, ServerConfig } from './schema.js';
import { unknownKeys } from './suggest.js';

const TOKEN_ENV = 'AUTOTEST_UPLOAD_TOKEN';

/** The environment's token overrides the file's, which is then not even checked. */
function readUploadToken(reader: SectionReader<typeof SERVER_KEYS>, env: NodeJS.ProcessEnv): string | undefined {
  const fromEnv = env[TOKEN_ENV];
  if (fromEnv === undefined) return reader.read('upload_token');
  if (fromEnv === '') return undefined;
  const fault = uploadTokenFault(fromEnv);
  if (fault !== undefined) {
    throw new AutotestError('ERR_CONFIG', `$${TOKEN_ENV}: ${fault}: allowed is ${uploadToken.allowed}`, { hint: 'make one with: openssl rand -hex 24' });
  }
  return fromEnv;
}

/** Without builtin_dir or custom_dir: the first folder or S3 prefix the packager publishes to. */
function firstServable(locations: Location[]): ServedLocation | undefined {
  const found = locations.find(isServable);
  return found && asServed(found);
}

export function readServerConfig(
  doc: IniDocument,
  baseDirOf: (file: string) => string,
  packages: PackagesConfig,
  env: NodeJS.ProcessEnv,
): { server: ServerConfig; warnings: string[] } {
  const reader = createSectionReader(doc, 'SERVER', SERVER_KEYS, { baseDirOf, s3: packages.s3, env });
  return {
    server: {
      logLevel: reader.read('log_level'),
      cache: {
        dir: reader.read('cache_dir'),
        sizeBytes: reader.read('cache_size'),
        indexMaxAgeMs: reader.read('index_max_age'),
      },
      listenAddress: reader.read('listen_address'),
      port: reader.read('port'),
      builtin: reader.read('builtin_dir') ?? firstServable(packages.uploadLocations),
      custom: reader.read('custom_dir') ?? firstServable(packages.customUploadLocations),
      uploadToken: readUploadToken(reader, env),
      maxUploadBytes: reader.read('max_upload_size'),
      maxUploadEntries: reader.read('max_upload_entries'),
      maxUploadExpandedBytes: reader.read('max_upload_expanded_size'),
      maxConcurrentUploads: reader.read('max_concurrent_uploads'),
      uploadMinRate: {
        bytesPerSecond: reader.read('upload_min_rate'),
        windowMs: reader.read('upload_rate_window'),
      },
    },
    warnings: unknownKeys(doc, 'SERVER'),
  };
}
