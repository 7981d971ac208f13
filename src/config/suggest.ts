import { sectionKeys, type IniDocument } from './ini.js';
import { CONFIG_KEYS, keysOfSection } from './keys.js';

/**
 * The closest of `known` to `word`, for "did you mean" hints: case is ignored and a swap of
 * two neighbours counts as one edit (optimal string alignment), and only a near miss is
 * offered: at most one edit in a short word, two in a longer one.
 */
export function closestMatch(word: string, known: Iterable<string>): string | undefined {
  const wanted = word.toLowerCase();
  const limit = wanted.length <= 4 ? 1 : 2;
  let best: { candidate: string; distance: number } | undefined;
  for (const candidate of known) {
    const distance = editDistance(wanted, candidate.toLowerCase());
    if (distance <= limit && (best === undefined || distance < best.distance)) best = { candidate, distance };
  }
  return best?.candidate;
}

/** Levenshtein distance with adjacent transpositions (optimal string alignment). */
export function editDistance(a: string, b: string): number {
  // Three rows are enough: a transposition looks two rows back.
  let before: number[] = [];
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i += 1) {
    const current = [i];
    for (let j = 1; j <= b.length; j += 1) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let value = Math.min((previous[j] ?? 0) + 1, (current[j - 1] ?? 0) + 1, (previous[j - 1] ?? 0) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) value = Math.min(value, (before[j - 2] ?? 0) + 1);
      current.push(value);
    }
    before = previous;
    previous = current;
  }
  return previous[b.length] ?? 0;
}

/** A warning for each key of `section` not declared for it, naming the closest declared one. */
export function unknownKeys(doc: IniDocument, section: string): string[] {
  const keys = keysOfSection(section) ?? {};
  const known = Object.keys(keys);
  return sectionKeys(doc, section)
    .filter((key) => !Object.hasOwn(keys, key))
    .map((key) => {
      const entry = doc.get(section)?.get(key);
      const near = closestMatch(key, known);
      const help = near === undefined ? `known: ${known.join(', ')}` : `did you mean "${near}"?`;
      return `${entry?.file ?? '?'}:${entry?.line ?? 0}: unknown key "${key}" in [${section}] is ignored (${help})`;
    });
}

/** The sections read here; [S3:BUCKET] sections too. */
const KNOWN_SECTIONS = [...Object.keys(CONFIG_KEYS), 'DEFAULT'];

/**
 * global_config.ini is shared with the rest of Autotest ([AUTOTEST_WEB], [SCHEDULER], ...), so
 * a section of ours is not the only kind there: one is reported only when it is a near miss of
 * ours (as [PACKAGE] or [packages]: ConfigParser's section names are case-sensitive), whose
 * keys would otherwise be ignored without a word.
 */
export function misspeltSections(doc: IniDocument, source: string): string[] {
  const warnings: string[] = [];
  for (const [name, section] of doc) {
    if (KNOWN_SECTIONS.includes(name) || name.startsWith('S3:')) continue;
    const near = closestMatch(name, KNOWN_SECTIONS);
    if (near === undefined) continue;
    const first = section.values().next().value;
    const where = first === undefined ? source : `${first.file}:${first.line.toString()}`;
    warnings.push(
      `${where}: unknown section [${name}] is ignored, with its ${section.size.toString()} key(s) (did you mean [${near}]? section names are case-sensitive)`,
    );
  }
  return warnings;
}
