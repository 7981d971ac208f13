import { CONFIG_KEYS, type ConfigSection, type KeyDeclaration } from './keys.js';

/** The README's default cell of a key, from its declaration. */
export function renderDefault(declaration: KeyDeclaration): string {
  if (declaration.defaultRule !== undefined) return declaration.defaultRule;
  const note = declaration.defaultNote;
  let text =
    declaration.default === undefined ? (note === undefined ? 'none' : `none: ${note}`) : `\`${declaration.default}\`${note === undefined ? '' : ` ${note}`}`;
  if (declaration.defaultFromEnv) text = `${declaration.defaultFromEnv.map((variable) => `\`$${variable}\``).join(', ')}, else ${text}`;
  if (declaration.embedded !== undefined) text += `; without a config file: \`${declaration.embedded}\``;
  return text;
}

const HEADINGS: Record<ConfigSection, string> = {
  PACKAGES: '`[PACKAGES]` key',
  S3: '`[S3]` key (and `[S3:BUCKET]` to override it for one bucket)',
  SERVER: '`[SERVER]` key',
};

const cell = (text: string): string => text.replace(/\|/g, '\\|');

/** The Markdown table of a section's keys: name, meaning and default. */
export function renderKeyTable(section: ConfigSection): string {
  const keys: Record<string, KeyDeclaration> = CONFIG_KEYS[section];
  const rows = Object.entries(keys).map(([name, declaration]) => `| \`${name}\` | ${cell(declaration.doc)} | ${cell(renderDefault(declaration))} |`);
  return [`| ${HEADINGS[section]} | meaning | default |`, '| --- | --- | --- |', ...rows].join('\n');
}

/** Where a section's table goes in the README: between these two lines. */
export function tableMarkers(section: ConfigSection): [string, string] {
  return [`<!-- config-keys ${section}: written by npm run docs:config from src/config/keys.ts -->`, `<!-- /config-keys ${section} -->`];
}

/** `readme` with each section's table, between its markers, written from the declarations. */
export function writeKeyTables(readme: string): string {
  let text = readme;
  for (const section of Object.keys(CONFIG_KEYS) as ConfigSection[]) {
    const [begin, end] = tableMarkers(section);
    const from = text.indexOf(begin);
    const to = text.indexOf(end, from);
    if (from < 0 || to < 0) throw new Error(`README: the markers of the [${section}] key table are missing: ${begin}`);
    text = `${text.slice(0, from + begin.length)}\n${renderKeyTable(section)}\n${text.slice(to)}`;
  }
  return text;
}
