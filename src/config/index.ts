export { loadConfig, chooseConfigFile, CONFIG_ENV, EMBEDDED_DEFAULT, EMBEDDED_SOURCE } from './load.js';
export { parseIni, overlayIni, getIniValue } from './ini.js';
export { readPackagesConfig, COMPRESSIONS } from './schema.js';
export { readServerConfig } from './server-section.js';
export { parseList } from './kinds.js';
export { PACKAGES_KEYS, SERVER_KEYS, S3_KEYS, CONFIG_KEYS, type KeyDeclaration, type ConfigSection } from './keys.js';
export type {
  Config,
  ConfigFile,
  PackagesConfig,
  ServerConfig,
  Compression,
  FetchSettings,
  FetchTls,
  FetchTrust,
  PemFile,
  ServedLocation,
  CachedUpstreams,
  ServerCacheConfig,
} from './schema.js';
export { readTlsFiles, type ReadTlsOptions } from './tls.js';
export { parseLocation, parseFetchLocation, memberKey, flattenFetchLocations, describeLocation, DEFAULT_S3_SETTINGS } from './location.js';
export type { Location, FetchLocation, LocationGroup, S3Location, S3Settings, S3SettingsFor } from './location.js';
