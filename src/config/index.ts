export { loadConfig, chooseConfigFile, CONFIG_ENV, EMBEDDED_DEFAULT, EMBEDDED_SOURCE } from './load.js';
export { parseIni, overlayIni, getIniValue } from './ini.js';
export { readPackagesConfig, parseList, PACKAGES_KEYS, COMPRESSIONS } from './schema.js';
export type { Config, PackagesConfig, Compression, FetchSettings } from './schema.js';
export { parseLocation, describeLocation } from './location.js';
export type { Location } from './location.js';
