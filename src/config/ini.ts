import { AutotestError } from '../errors.js';

/**
 * A reader for the ConfigParser dialect that Autotest's global_config.ini is written in.
 * No npm INI library follows it (continuation lines, `:` as well as `=`, case-insensitive
 * keys, a DEFAULT section, `%(key)s` interpolation, Python 2's ` ;` inline comments), and
 * Autotest configs rely on each of these, so the small parser lives here.
 */
export interface IniValue {
  value: string;
  file: string;
  line: number;
}

export type IniSection = Map<string, IniValue>;

/** Sections by name (case kept, as ConfigParser does); keys lower-cased. */
export type IniDocument = Map<string, IniSection>;

const DEFAULT_SECTION = 'DEFAULT';
const SECTION_RE = /^\[(?<name>[^\]]+)\]\s*(?:[;#].*)?$/;
const OPTION_RE = /^(?<key>[^=:]*?)\s*[=:]\s*(?<value>.*)$/;

function fail(file: string, line: number, what: string): never {
  throw new AutotestError('ERR_CONFIG', `${file}:${line}: ${what}`, {
    hint: 'global_config.ini follows Python ConfigParser: "[SECTION]" headers, then "key: value" or "key = value" lines',
  });
}

/** Python 2's ConfigParser strips ` ;comment` (whitespace, then `;`) after a value; so do we. */
function stripInlineComment(value: string): string {
  const match = /\s;/.exec(value);
  return (match ? value.slice(0, match.index) : value).trimEnd();
}

export function parseIni(text: string, file: string): IniDocument {
  const doc: IniDocument = new Map();
  let section: IniSection | undefined;
  let sectionName = '';
  let current: { key: string; lines: string[]; entry: IniValue } | undefined;

  const finishValue = (): void => {
    if (!current) return;
    while (current.lines.length > 1 && current.lines[current.lines.length - 1] === '') current.lines.pop();
    current.entry.value = current.lines.join('\n');
    current = undefined;
  };

  const lines = text.split(/\r?\n/);
  for (const [index, raw] of lines.entries()) {
    const lineNo = index + 1;
    if (raw.includes('\0')) fail(file, lineNo, 'contains a NUL byte');
    const stripped = raw.trim();
    if (stripped.startsWith('#') || stripped.startsWith(';')) continue;
    if (stripped === '') {
      if (current) current.lines.push('');
      continue;
    }
    if (/^\s/.test(raw) && current) {
      current.lines.push(stripInlineComment(stripped));
      continue;
    }
    finishValue();
    const header = SECTION_RE.exec(stripped);
    if (header?.groups) {
      sectionName = (header.groups.name ?? '').trim();
      if (sectionName === '') fail(file, lineNo, 'empty section name');
      if (doc.has(sectionName)) fail(file, lineNo, `section [${sectionName}] appears twice`);
      section = new Map();
      doc.set(sectionName, section);
      continue;
    }
    const option = OPTION_RE.exec(stripped);
    if (!option?.groups) fail(file, lineNo, `cannot read "${stripped}": expected "key: value" or "key = value"`);
    if (!section) fail(file, lineNo, `"${stripped}" comes before any [SECTION] header`);
    const key = (option.groups.key ?? '').trim().toLowerCase();
    if (key === '') fail(file, lineNo, 'a value without a key');
    if (section.has(key)) fail(file, lineNo, `key "${key}" appears twice in section [${sectionName}]`);
    const entry: IniValue = { value: '', file, line: lineNo };
    section.set(key, entry);
    current = { key, lines: [stripInlineComment(option.groups.value ?? '')], entry };
  }
  finishValue();
  return doc;
}

/** Lays `over` on `base` key by key, as shadow_config.ini does to global_config.ini. */
export function overlayIni(base: IniDocument, over: IniDocument): IniDocument {
  const merged: IniDocument = new Map();
  for (const [name, section] of base) merged.set(name, new Map(section));
  for (const [name, section] of over) {
    const target = merged.get(name) ?? new Map<string, IniValue>();
    for (const [key, value] of section) target.set(key, value);
    merged.set(name, target);
  }
  return merged;
}

const MAX_INTERPOLATION_DEPTH = 10;
/** Longest value interpolation may build: far beyond any real location list or path. */
const MAX_INTERPOLATED_LENGTH = 1024 * 1024;

/**
 * The value of `key` in `sectionName` with ConfigParser's basic interpolation applied:
 * `%(other)s` takes another key of the same section (or DEFAULT), `%%` is a literal `%`.
 */
export function getIniValue(doc: IniDocument, sectionName: string, key: string): IniValue | undefined {
  const lookup = (name: string): IniValue | undefined => doc.get(sectionName)?.get(name) ?? doc.get(DEFAULT_SECTION)?.get(name);
  const found = lookup(key);
  if (!found) return undefined;
  // References that each repeat another many times grow a value exponentially with depth
  // ("billion laughs"): every character interpolation produces counts against one bound.
  let produced = 0;
  const expand = (value: string, depth: number): string => {
    if (depth > MAX_INTERPOLATION_DEPTH) {
      fail(found.file, found.line, `interpolation of "${key}" in [${sectionName}] nests too deep (a loop?)`);
    }
    return value.replace(/%(%|\((?<name>[^)]*)\)s|.?)/g, (whole: string, what: string, name?: string) => {
      if (what === '%') return '%';
      if (name === undefined) {
        fail(found.file, found.line, `"${whole}" in "${key}": a "%" must be "%%" or "%(key)s"`);
      }
      const ref = lookup(name.toLowerCase());
      if (!ref) fail(found.file, found.line, `"${key}" refers to "%(${name})s", which is not set in [${sectionName}]`);
      const expanded = expand(ref.value, depth + 1);
      produced += expanded.length;
      if (produced > MAX_INTERPOLATED_LENGTH) {
        fail(
          found.file,
          found.line,
          `interpolation of "${key}" in [${sectionName}] makes a value longer than ${MAX_INTERPOLATED_LENGTH.toString()} characters`,
        );
      }
      return expanded;
    });
  };
  return { ...found, value: expand(found.value, 0) };
}

export function sectionKeys(doc: IniDocument, sectionName: string): string[] {
  return [...(doc.get(sectionName)?.keys() ?? [])];
}
