/**
 * The generated benchmark tree, shaped like a real Autotest client tree: Autotest's client/
 * with the 102 tests of autotest-client-tests (6,056 files, 68.7 MB, 134 packages plus the
 * client; the largest packages compress to 9.6, 4.9 and 3.8 MB; 42 MB of bzip2 output, most
 * of it source tarballs shipped inside tests, deps and profilers that compress no further).
 *
 * Here: the client's own Python (common_lib/, bin/, tools/...), 102 tests, 12 deps and 20
 * profilers; about 5,800 text files of 1-20 KB (code-like, compressing about as source does),
 * folders up to five levels deep (tests that ship an unpacked source tree), about 200
 * already-compressed files of 100 KB-2 MB, and three packages of 5-10 MB compressed. The
 * content is a function of the seed alone, so every run packs the same bytes.
 */
import { createCipheriv } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** A small deterministic PRNG (mulberry32). */
export function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const KEYWORDS = [
  'def',
  'return',
  'if',
  'else:',
  'for',
  'in',
  'import',
  'self.',
  'try:',
  'except',
  'raise',
  'with',
  'None',
  'True',
  'logging.debug(',
  'utils.system(',
  'os.path.join(',
  'error.TestError(',
];

function vocabulary(rand: () => number): string[] {
  const letters = 'abcdefghijklmnopqrstuvwxyz_';
  const words: string[] = [];
  for (let i = 0; i < 600; i += 1) {
    let word = '';
    const length = 3 + Math.floor(rand() * 10);
    for (let j = 0; j < length; j += 1) word += letters[Math.floor(rand() * letters.length)] ?? 'x';
    words.push(word);
  }
  return words;
}

const VOCABULARY = vocabulary(random(7));

/** Code-like text: indented lines of keywords, identifiers and numbers; bzip2 takes it to about a fifth. */
export function text(bytes: number, rand: () => number): Buffer {
  const parts: string[] = [];
  let length = 0;
  while (length < bytes) {
    const indent = ' '.repeat(4 * Math.floor(rand() * 4));
    const words: string[] = [];
    const count = 2 + Math.floor(rand() * 7);
    for (let i = 0; i < count; i += 1) {
      const r = rand();
      if (r < 0.3) words.push(KEYWORDS[Math.floor(rand() * KEYWORDS.length)] ?? '');
      else if (r < 0.9) words.push(VOCABULARY[Math.floor(Math.pow(rand(), 2) * VOCABULARY.length)] ?? '');
      else words.push(String(Math.floor(rand() * 100_000)));
    }
    const line = `${indent}${words.join(' ')}\n`;
    parts.push(line);
    length += line.length;
  }
  return Buffer.from(parts.join('')).subarray(0, bytes);
}

/** Bytes that do not compress (like a .tar.gz), deterministic: AES-CTR of zeros. */
export function compressed(bytes: number, seed: number): Buffer {
  const key = Buffer.alloc(16);
  key.writeUInt32LE(seed >>> 0, 0);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  return Buffer.concat([cipher.update(Buffer.alloc(bytes)), cipher.final()]);
}

export interface TreeShape {
  files: number;
  bytes: number;
  packages: number;
}

interface Writer {
  file(rel: string, data: Buffer): Promise<void>;
  shape: TreeShape;
}

function createWriter(root: string): Writer {
  const made = new Set<string>();
  const shape: TreeShape = { files: 0, bytes: 0, packages: 0 };
  return {
    shape,
    async file(rel, data) {
      const abs = path.join(root, rel);
      const dir = path.dirname(abs);
      if (!made.has(dir)) {
        await mkdir(dir, { recursive: true });
        made.add(dir);
      }
      await writeFile(abs, data);
      shape.files += 1;
      shape.bytes += data.length;
    },
  };
}

/** A text file size of 1-20 KB, most of them small, as source files are (mean about 6 KB). */
function textSize(rand: () => number): number {
  return 1000 + Math.floor(Math.pow(rand(), 3) * 19_000);
}

/** An unpacked source tree of `count` text files, up to `depth` folders deep. */
async function sourceTree(w: Writer, base: string, count: number, depth: number, rand: () => number): Promise<void> {
  const dirs = [base];
  for (let i = 0; i < count; i += 1) {
    if (rand() < 0.12) {
      const parent = dirs[Math.floor(rand() * dirs.length)] ?? base;
      if (parent.split('/').length - base.split('/').length < depth) dirs.push(`${parent}/d${i}`);
    }
    const dir = dirs[Math.floor(rand() * dirs.length)] ?? base;
    const ext = ['c', 'h', 'py', 'sh', 'txt', 'S'][Math.floor(rand() * 6)] ?? 'c';
    await w.file(`${dir}/f${i}.${ext}`, text(textSize(rand), rand));
  }
}

/**
 * Writes the tree under `root`. `files` (default about 6,000) scales the number of small
 * text files; everything else keeps the real tree's shape.
 */
export async function generate(root: string, options: { files?: number } = {}): Promise<TreeShape> {
  const w = createWriter(root);
  const rand = random(42);
  // About 1,050 files are fixed and 4,950 scale with the source trees: a larger count grows those.
  const scale = Math.max(1, ((options.files ?? 6000) - 1050) / 4950);
  const small = (n: number): number => Math.round(n * scale);
  let seed = 1;

  // The client itself: common_lib, bin, tools, net... about 700 Python files, three levels deep.
  await sourceTree(w, 'common_lib', small(260), 2, rand);
  await sourceTree(w, 'bin', small(220), 3, rand);
  await sourceTree(w, 'tools', small(120), 2, rand);
  await sourceTree(w, 'shared', small(100), 2, rand);
  await w.file('profilers/__init__.py', text(1500, rand));
  await w.file('deps/__init__.py', text(200, rand));
  await w.file('tests/__init__.py', text(200, rand));
  w.shape.packages += 1;

  // The three largest packages: an LTP-like test (9.6 MB compressed), a kernel-build-like test
  // with a big tarball and a source tree (4.9 MB) and a dep shipping a toolchain (3.8 MB).
  await w.file('tests/ltp/control', text(3000, rand));
  await w.file('tests/ltp/ltp.py', text(9000, rand));
  await w.file('tests/ltp/ltp-full-20120104.tar.bz2', compressed(5_200_000, seed++));
  await w.file('tests/ltp/ltp-patches.tar.gz', compressed(4_000_000, seed++));
  await sourceTree(w, 'tests/ltp/scripts', small(60), 2, rand);
  await w.file('tests/kernbench/control', text(2000, rand));
  await w.file('tests/kernbench/linux-2.6.18.tar.bz2', compressed(4_300_000, seed++));
  await sourceTree(w, 'tests/kernbench/src', small(300), 5, rand);
  await w.file('deps/systemtap/systemtap.py', text(4000, rand));
  await w.file('deps/systemtap/systemtap-1.8.tar.gz', compressed(3_100_000, seed++));
  await sourceTree(w, 'deps/systemtap/patches', small(120), 2, rand);
  w.shape.packages += 3;

  // 100 more tests: control, wrapper and a few helpers; most ship a source tarball of
  // 100 KB-2 MB; one in six ships an unpacked source tree (several levels deep).
  for (let i = 0; i < 100; i += 1) {
    const base = `tests/test${String(i).padStart(3, '0')}`;
    await w.file(`${base}/control`, text(1000 + Math.floor(rand() * 3000), rand));
    await w.file(`${base}/test${i}.py`, text(textSize(rand), rand));
    const helpers = Math.floor(rand() * 6);
    for (let j = 0; j < helpers; j += 1) await w.file(`${base}/helper${j}.${rand() < 0.5 ? 'sh' : 'py'}`, text(textSize(rand), rand));
    if (rand() < 0.6) await w.file(`${base}/src${i}.tar.gz`, compressed(50_000 + Math.floor(Math.pow(rand(), 6) * 700_000), seed++));
    if (rand() < 0.25) await w.file(`${base}/data${i}.bin`, compressed(60_000 + Math.floor(rand() * 100_000), seed++));
    if (i % 6 === 0) await sourceTree(w, `${base}/src`, small(60 + Math.floor(rand() * 150)), 4, rand);
    else await sourceTree(w, `${base}/files`, small(10 + Math.floor(rand() * 20)), 1, rand);
    w.shape.packages += 1;
  }
  // 11 more deps and 20 profilers, each a wrapper and mostly a tarball.
  for (const [kind, count, files] of [
    ['deps', 11, 30],
    ['profilers', 20, 5],
  ] as const) {
    for (let i = 0; i < count; i += 1) {
      const base = `${kind}/${kind === 'deps' ? 'dep' : 'prof'}${String(i).padStart(2, '0')}`;
      await w.file(`${base}/${path.basename(base)}.py`, text(textSize(rand), rand));
      if (rand() < 0.75) await w.file(`${base}/${path.basename(base)}-1.0.tar.gz`, compressed(50_000 + Math.floor(Math.pow(rand(), 6) * 600_000), seed++));
      await sourceTree(w, `${base}/extra`, small(Math.floor(rand() * files)), 2, rand);
      w.shape.packages += 1;
    }
  }
  return w.shape;
}
