export { loadConfig, chooseConfigFile, CONFIG_ENV, EMBEDDED_DEFAULT, EMBEDDED_SOURCE } from './load.js';
export { parseIni, overlayIni, getIniValue } from './ini.js';
export { readPackagesConfig, readServerConfig, parseList, PACKAGES_KEYS, SERVER_KEYS, COMPRESSIONS } from './schema.js';
export type { Config, PackagesConfig, ServerConfig, Compression, FetchSettings } from './schema.js';
export { parseLocation, describeLocation } from './location.js';
export type { Location } from './location.js';
