export {
  checkName,
  checkFileName,
  MAX_FILE_NAME_LENGTH,
  MAX_PACKAGE_NAME_LENGTH,
  RESERVED_FILE_NAMES,
  checkType,
  packageFileName,
  parseFileName,
  parseNameList,
  PACKAGE_TYPES,
  CLIENT_PACKAGE_NAME,
  EXTENSIONS,
} from './names.js';
export type { PackageType, ParsedFileName } from './names.js';
export { fileEntry, walkTree, readPackExclude, combineRules, treeFingerprint, linkStaysInside, sortDirents, PACK_EXCLUDE_FILE } from './tree.js';
export type { TreeEntry, ExcludeRule } from './tree.js';
export { compressTarFile, digestEntries, packEntries, writeTarFile, TARBALL_MTIME } from './tarball.js';
export type { PackOptions, PackResult } from './tarball.js';
export { createCompressorPool } from './compressor-pool.js';
export type { CompressorPool } from './compressor-pool.js';
export { extractTarball, checkEntryPath } from './extract.js';
export type { ExtractLimits, ExtractResult } from './extract.js';
export { DigestStream, digestFile } from './digest.js';
export type { Digests } from './digest.js';
export {
  CHECKSUM_FILE,
  MANIFEST_FILE,
  SIGNATURE_FILE,
  parseChecksumFile,
  formatChecksumFile,
  parseManifest,
  parseManifestDocument,
  formatManifest,
  mergeIndex,
  matchesEntry,
  readIndexFiles,
  indexProblems,
  listedEntries,
} from './repository-index.js';
export type { IndexEntry, ListedEntry, ManifestHeader, RepositoryIndex } from './repository-index.js';
