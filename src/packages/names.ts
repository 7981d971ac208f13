import { AutotestError } from '../errors.js';
import type { Compression } from './compression.js';

export const PACKAGE_TYPES = ['client', 'test', 'dep', 'profiler'] as const;
export type PackageType = (typeof PACKAGE_TYPES)[number];

/** The client runtime's package name, as Autotest names it: client-autotest.tar.bz2. */
export const CLIENT_PACKAGE_NAME = 'autotest';

export const EXTENSIONS: Record<Compression, string> = {
  bzip2: '.tar.bz2',
  gzip: '.tar.gz',
  zstd: '.tar.zst',
};

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._+-]*$/;
/** The one length limit: a repository file name, as every index reader checks it. */
export const MAX_FILE_NAME_LENGTH = 200;
/**
 * A package name leaves room for its longest type and extension (`profiler-NAME.tar.bz2`),
 * so every name the packager takes gives a file name the index can hold.
 */
export const MAX_PACKAGE_NAME_LENGTH = MAX_FILE_NAME_LENGTH - 'profiler-'.length - Math.max(...Object.values(EXTENSIONS).map((ext) => ext.length));

/** Refuses anything that is not `[A-Za-z0-9][A-Za-z0-9._+-]*`: no `/`, no `..`, no leading dot. */
export function checkName(name: string, what = 'package name', maxLength = MAX_PACKAGE_NAME_LENGTH): string {
  const shown = JSON.stringify(name);
  if (name === '') throw badName(`${what} is empty`);
  if (name.length > maxLength)
    throw badName(`${what} ${shown.slice(0, 40)}… is ${name.length.toString()} characters long; at most ${maxLength.toString()} are allowed`);
  if (name.includes('..')) throw badName(`${what} ${shown} contains ".."`);
  if (!NAME_RE.test(name)) {
    throw badName(`${what} ${shown} is not allowed: it must start with a letter or digit and hold only letters, digits, ".", "_", "+" and "-"`);
  }
  return name;
}

function badName(message: string): AutotestError {
  return new AutotestError('ERR_BAD_NAME', message, {
    hint: 'package names look like "sleeptest" or "libaio-0.3": letters, digits, ".", "_", "+", "-"',
  });
}

export function checkType(type: string): PackageType {
  if (!(PACKAGE_TYPES as readonly string[]).includes(type)) {
    throw new AutotestError('ERR_BAD_NAME', `package type "${type}" is unknown; known types: ${PACKAGE_TYPES.join(', ')}`);
  }
  return type as PackageType;
}

/** Files of the repository itself: never a package, never removed or overwritten by name. */
export const RESERVED_FILE_NAMES: ReadonlySet<string> = new Set(['packages.checksum', 'packages.json', 'packages.json.sig']);

/** A repository file name: a checked name that is not one of the index files. */
export function checkFileName(file: string): string {
  checkName(file, 'file name', MAX_FILE_NAME_LENGTH);
  if (RESERVED_FILE_NAMES.has(file)) {
    throw new AutotestError('ERR_BAD_NAME', `file name "${file}" is reserved for the repository index`, {
      hint: 'rename the file before publishing it',
    });
  }
  return file;
}

export function packageFileName(type: PackageType, name: string, compression: Compression): string {
  return `${checkType(type)}-${checkName(name)}${EXTENSIONS[compression]}`;
}

export interface ParsedFileName {
  /** Undefined for plain files (kernels, images) published with --file. */
  type: PackageType | undefined;
  name: string;
  compression: Compression | undefined;
}

/**
 * Reads a repository file name: `<type>-<name>.tar.<ext>` for packages, anything that
 * passes checkName for plain files. Throws on names that could not have been published.
 */
export function parseFileName(file: string): ParsedFileName {
  checkFileName(file);
  for (const [compression, ext] of Object.entries(EXTENSIONS) as [Compression, string][]) {
    if (!file.endsWith(ext)) continue;
    const stem = file.slice(0, -ext.length);
    const dash = stem.indexOf('-');
    const type = stem.slice(0, dash);
    if (dash > 0 && (PACKAGE_TYPES as readonly string[]).includes(type)) {
      return { type: type as PackageType, name: checkName(stem.slice(dash + 1)), compression };
    }
  }
  return { type: undefined, name: file, compression: undefined };
}

/** Splits a comma-separated --test/--dependency/--profiler value into checked names. */
export function parseNameList(value: string, what: string): string[] {
  const names = value.split(',').map((item) => item.trim());
  if (names.every((name) => name === '')) throw badName(`${what} list is empty`);
  return names.filter((name) => name !== '').map((name) => checkName(name, `${what} name`));
}
