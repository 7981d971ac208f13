import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

/**
 * The shape of the source tree, checked where it can be measured: one folder per repository
 * scheme, short functions, and no decision taken on the words of an error message.
 */

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const SRC = path.join(ROOT, 'src');
const MAX_OWN_LINES = 60;

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(full);
    return entry.name.endsWith('.ts') ? [full] : [];
  });
}

type FunctionLike = ts.FunctionLikeDeclaration & { body: ts.Node };

function isFunctionWithBody(node: ts.Node): node is FunctionLike {
  return (
    (ts.isFunctionDeclaration(node) ||
      ts.isMethodDeclaration(node) ||
      ts.isArrowFunction(node) ||
      ts.isFunctionExpression(node) ||
      ts.isConstructorDeclaration(node) ||
      ts.isGetAccessorDeclaration(node) ||
      ts.isSetAccessorDeclaration(node)) &&
    node.body !== undefined
  );
}

/** Lines of a function's body, less the lines of the functions nested in it (each is measured on its own). */
function ownBodyLines(fn: FunctionLike, source: ts.SourceFile): number {
  const lineOf = (position: number): number => source.getLineAndCharacterOfPosition(position).line;
  const lines = new Set<number>();
  for (let line = lineOf(fn.body.getStart(source)); line <= lineOf(fn.body.getEnd()); line++) lines.add(line);
  const dropNested = (node: ts.Node): void => {
    node.forEachChild((child) => {
      if (!isFunctionWithBody(child)) {
        dropNested(child);
        return;
      }
      // The nested function's first and last lines are shared with the code around it.
      for (let line = lineOf(child.getStart(source)) + 1; line < lineOf(child.getEnd()); line++) lines.delete(line);
    });
  };
  dropNested(fn.body);
  return lines.size;
}

function longFunctions(file: string): string[] {
  const source = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true);
  const found: string[] = [];
  const visit = (node: ts.Node): void => {
    if (isFunctionWithBody(node)) {
      const lines = ownBodyLines(node, source);
      if (lines > MAX_OWN_LINES) {
        const at = source.getLineAndCharacterOfPosition(node.getStart(source)).line + 1;
        found.push(`${path.relative(ROOT, file)}:${at.toString()} ${node.name?.getText(source) ?? '(anonymous)'}: ${lines.toString()} lines`);
      }
    }
    node.forEachChild(visit);
  };
  visit(source);
  return found;
}

test(`no function in src/ has more than ${MAX_OWN_LINES.toString()} lines of its own body (nested functions measured on their own)`, () => {
  const files = sourceFiles(SRC);
  assert.ok(files.length > 50, `expected the whole source tree, found ${files.length.toString()} files`);
  assert.deepEqual(files.flatMap(longFunctions), []);
});

test('the measure of a function counts its own lines and leaves out the functions nested in it', () => {
  const nested = Array.from({ length: 70 }, (_, i) => `    const v${i.toString()} = ${i.toString()};`).join('\n');
  const text = `function outer() {\n  const inner = () => {\n${nested}\n  };\n  return inner;\n}\n`;
  const source = ts.createSourceFile('x.ts', text, ts.ScriptTarget.Latest, true);
  const outer = source.statements[0];
  assert.ok(outer && isFunctionWithBody(outer));
  // Its braces, the lines that open and close the nested function, and the return.
  assert.equal(ownBodyLines(outer, source), 5);
  let inner: FunctionLike | undefined;
  const find = (node: ts.Node): void => {
    if (ts.isArrowFunction(node)) inner = node;
    node.forEachChild(find);
  };
  find(outer);
  assert.ok(inner);
  assert.equal(ownBodyLines(inner, source), 72);
});

test('every repository scheme has a folder of its own with its read side, and the writable ones their write side', () => {
  for (const scheme of ['local', 'ssh', 'http', 's3', 'git']) {
    assert.ok(existsSync(path.join(SRC, 'repositories', scheme, 'read.ts')), `src/repositories/${scheme}/read.ts`);
  }
  for (const scheme of ['local', 'ssh', 's3']) {
    assert.ok(existsSync(path.join(SRC, 'repositories', scheme, 'write.ts')), `src/repositories/${scheme}/write.ts`);
  }
  // Nothing of a scheme left behind in the folders that used to hold it.
  assert.equal(existsSync(path.join(SRC, 'fetch', 'repositories.ts')), false);
  assert.equal(existsSync(path.join(SRC, 's3')), false);
});

/** Ways code reads an error's or a process's words to decide what happened. */
const TEXT_DECISIONS: { pattern: RegExp; what: string }[] = [
  { pattern: /\.message\s*(===|!==|==|!=)/, what: 'compares an error message' },
  { pattern: /\.message\.(includes|startsWith|endsWith|match|search|indexOf)\(/, what: 'searches an error message' },
  { pattern: /\.test\([^)]*\b(message|stderr|why)\b/, what: 'matches a pattern against an error message or stderr' },
  { pattern: /\b(stderr|why)\.(includes|startsWith|endsWith|match|search|indexOf)\(/, what: 'searches stderr' },
];

test('no code decides what happened from the words of an error message or of stderr', () => {
  const found: string[] = [];
  for (const file of sourceFiles(SRC)) {
    readFileSync(file, 'utf8')
      .split('\n')
      .forEach((line, index) => {
        for (const { pattern, what } of TEXT_DECISIONS) {
          if (pattern.test(line)) found.push(`${path.relative(ROOT, file)}:${(index + 1).toString()} ${what}: ${line.trim()}`);
        }
      });
  }
  assert.deepEqual(found, []);
});

test('the fetch policy and the caching front read no clock, timer or randomness of their own: they come in as arguments (fetch/clock.ts has the real ones)', () => {
  const policyFiles = [
    ...sourceFiles(path.join(SRC, 'fetch')).filter((file) => path.basename(file) !== 'clock.ts'),
    ...sourceFiles(path.join(SRC, 'server')).filter((file) => /\/cache(-[a-z]+)?\.ts$/.test(file) && !file.endsWith('cache-store.ts')),
  ];
  assert.ok(policyFiles.length >= 8, `expected the policy files, found ${policyFiles.length.toString()}`);
  const found: string[] = [];
  for (const file of policyFiles) {
    readFileSync(file, 'utf8')
      .split('\n')
      .forEach((line, index) => {
        // The traffic sampler's once-a-minute tick is a timer by nature; its timestamps come from the clock given.
        if (/\b(Date\.now|Math\.random|performance\.now|setTimeout)\(/.test(line))
          found.push(`${path.relative(ROOT, file)}:${(index + 1).toString()}: ${line.trim()}`);
      });
  }
  assert.deepEqual(found, []);
});

/** The folder of src/ (or the top-level module) a source file belongs to. */
function unitOf(file: string): string {
  const [first = ''] = path.relative(SRC, file).split(path.sep);
  return first.replace(/\.(ts|js)$/, '');
}

/** Which folders of src/ each folder imports from (type-only imports count: they tie the folders too). */
function folderImports(): Map<string, Set<string>> {
  const graph = new Map<string, Set<string>>();
  for (const file of sourceFiles(SRC)) {
    const from = unitOf(file);
    const targets = graph.get(from) ?? new Set<string>();
    graph.set(from, targets);
    for (const match of readFileSync(file, 'utf8').matchAll(/(?:from|import\()\s*'(\.{1,2}\/[^']+)'/g)) {
      const to = unitOf(path.resolve(path.dirname(file), match[1] ?? ''));
      if (to !== from) targets.add(to);
    }
  }
  return graph;
}

test('the folders of src/ import one another in one direction only: no folder reaches itself through its imports', () => {
  const graph = folderImports();
  assert.ok((graph.get('cli')?.size ?? 0) > 5, 'the graph holds the CLI and what it uses');
  const cycles: string[] = [];
  for (const start of graph.keys()) {
    // Depth-first from each folder: a path back to it is a cycle.
    const stack: string[][] = [[start]];
    const seen = new Set<string>();
    while (stack.length > 0) {
      const trail = stack.pop() ?? [];
      for (const next of graph.get(trail[trail.length - 1] ?? '') ?? []) {
        if (next === start) cycles.push([...trail, next].join(' -> '));
        else if (!seen.has(next)) {
          seen.add(next);
          stack.push([...trail, next]);
        }
      }
    }
  }
  assert.deepEqual(cycles, []);
});
