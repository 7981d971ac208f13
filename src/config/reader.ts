import { AutotestError, redactSecrets } from '../errors.js';
import { getIniValue, type IniDocument, type IniValue } from './ini.js';
import { ValueFault, type ValueContext, type ValueKind } from './kinds.js';
import type { KeyDeclaration } from './keys.js';
import type { S3SettingsFor } from './location.js';

type KindOf<Declaration> = Declaration extends { kind: ValueKind<infer T> } ? T : never;

/** A key with a default reads as its kind; one without may be undefined. */
type ValueOf<Declaration> = Declaration extends { default: string } ? KindOf<Declaration> : KindOf<Declaration> | undefined;

/** The keys of one section, read and checked against their declarations. */
export interface SectionReader<Keys extends Record<string, KeyDeclaration>> {
  section: string;
  entry(name: keyof Keys & string): IniValue | undefined;
  /** The key's value, else its default (from the environment, else as declared). */
  read<K extends keyof Keys & string>(name: K): ValueOf<Keys[K]>;
  /** The key's value, else `fallback`: what a per-bucket section inherits. */
  readOr<K extends keyof Keys & string>(name: K, fallback: KindOf<Keys[K]>): KindOf<Keys[K]>;
  /** Throws the ERR_CONFIG error that names file, line, section and key. */
  refuse(name: keyof Keys & string, allowed: string, detail?: string): never;
}

export interface ReaderOptions {
  /** The folder relative paths of a value are resolved against: that of the file it came from. */
  baseDirOf: (file: string) => string;
  s3: S3SettingsFor;
  env: NodeJS.ProcessEnv;
}

export function refuseValue(section: string, entry: IniValue, key: string, declaration: KeyDeclaration | undefined, allowed: string, detail?: string): never {
  // A secret is never echoed back, even when it is the value at fault.
  const found = entry.value === '' ? 'an empty value' : declaration?.secret === true ? 'the value given' : `"${redactSecrets(entry.value)}"`;
  throw new AutotestError('ERR_CONFIG', `${entry.file}:${entry.line}: [${section}] ${key} = ${found}${detail ? ` (${detail})` : ''}: allowed is ${allowed}`);
}

function parseWith<T>(kind: ValueKind<T>, text: string, context: ValueContext, refuse: (fault: ValueFault) => never): T {
  try {
    return kind.parse(text.trim(), context);
  } catch (error) {
    if (error instanceof ValueFault) refuse(error);
    throw error;
  }
}

export function createSectionReader<Keys extends Record<string, KeyDeclaration>>(
  doc: IniDocument,
  section: string,
  keys: Keys,
  options: ReaderOptions,
): SectionReader<Keys> {
  const declarationOf = (name: string): KeyDeclaration => {
    const declaration = keys[name];
    if (!declaration) throw new Error(`[${section}] ${name} is not declared`);
    return declaration;
  };
  const fromEntry = (name: string, entry: IniValue): unknown => {
    const declaration = declarationOf(name);
    const context = { baseDir: options.baseDirOf(entry.file), setAt: `${entry.file}:${entry.line.toString()}: [${section}] ${name}`, s3: options.s3 };
    return parseWith(declaration.kind, entry.value, context, (fault) =>
      refuseValue(section, entry, name, declaration, fault.allowed ?? declaration.kind.allowed, fault.detail),
    );
  };
  const fromDefault = (name: string): unknown => {
    const declaration = declarationOf(name);
    const variable = declaration.defaultFromEnv?.find((candidate) => (options.env[candidate] ?? '') !== '');
    const text = variable === undefined ? declaration.default : options.env[variable];
    if (text === undefined) return undefined;
    const context = { baseDir: process.cwd(), setAt: variable === undefined ? `(default) [${section}] ${name}` : `$${variable}`, s3: options.s3 };
    return parseWith(declaration.kind, text, context, (fault) => {
      throw new AutotestError(
        'ERR_CONFIG',
        `${context.setAt} = "${redactSecrets(text)}"${fault.detail ? ` (${fault.detail})` : ''}: allowed is ${fault.allowed ?? declaration.kind.allowed}`,
      );
    });
  };
  const entry = (name: string): IniValue | undefined => getIniValue(doc, section, name);
  return {
    section,
    entry,
    read: <K extends keyof Keys & string>(name: K) => {
      const found = entry(name);
      return (found ? fromEntry(name, found) : fromDefault(name)) as ValueOf<Keys[K]>;
    },
    readOr: <K extends keyof Keys & string>(name: K, fallback: KindOf<Keys[K]>) => {
      const found = entry(name);
      return found ? (fromEntry(name, found) as KindOf<Keys[K]>) : fallback;
    },
    refuse(name, allowed, detail) {
      const found = entry(name);
      if (!found) throw new Error(`[${section}] ${name} is refused but not set`);
      refuseValue(section, found, name, keys[name], allowed, detail);
    },
  };
}
