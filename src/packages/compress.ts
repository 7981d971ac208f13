import { spawn } from 'node:child_process';
import { access, constants } from 'node:fs/promises';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { createGunzip, createGzip, type Gunzip, type Gzip } from 'node:zlib';
import { AutotestError } from '../errors.js';
import type { Compression } from './compression.js';

/** A compressor or decompressor: bytes go into `input`, come out of `output`. */
export interface Filter {
  input: Writable;
  output: Readable;
  /** Settles when the filter has finished; rejects when its process failed. */
  done: Promise<void>;
  /** The tool doing the work, for messages and the manifest. */
  tool: string;
}

const toolCache = new Map<string, Promise<string | undefined>>();

async function which(command: string): Promise<string | undefined> {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir === '') continue;
    const candidate = path.join(dir, command);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this folder
    }
  }
  return undefined;
}

/** The first of `commands` found on PATH; looked up once per process. */
async function firstTool(commands: readonly string[]): Promise<string | undefined> {
  const key = commands.join(',');
  let found = toolCache.get(key);
  if (!found) {
    found = (async () => {
      for (const command of commands) {
        if (await which(command)) return command;
      }
      return undefined;
    })();
    toolCache.set(key, found);
  }
  return found;
}

// lbzip2 and pbzip2 use every core and write tar -j compatible streams; lbzip2's output is
// the same whatever the number of threads, so tarballs stay reproducible.
const BZIP2_TOOLS = ['lbzip2', 'pbzip2', 'bzip2'] as const;

/**
 * Runs `command` as a filter. A failure to start is the tool's (ERR_TOOL); a failure once
 * running is `failed(why)`: for a decompressor that means the data was bad.
 */
function spawnFilter(command: string, args: string[], what: string, failed: (why: string) => AutotestError): Filter {
  const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => {
    if (stderr.length < 4096) stderr += chunk;
  });
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', (error) => {
      reject(new AutotestError('ERR_TOOL', `cannot run ${command} to ${what}: ${error.message}`, { cause: error }));
    });
    child.on('close', (code, signal) => {
      if (code === 0) resolve();
      else {
        const why = signal ? `killed by ${signal}` : `exit code ${code}`;
        reject(failed(`${command} failed to ${what} (${why})${stderr ? `: ${stderr.trim()}` : ''}`));
      }
    });
  });
  // A failed tool closes its stdin early; the error surfaces through `done`, not as EPIPE.
  child.stdin.on('error', () => undefined);
  return { input: child.stdin, output: child.stdout, done, tool: command };
}

function zlibFilter(stream: Gzip | Gunzip, tool: string): Filter {
  const done = new Promise<void>((resolve, reject) => {
    stream.on('end', resolve);
    stream.on('error', reject);
  });
  return { input: stream, output: stream, done, tool };
}

async function requireTool(commands: readonly string[], compression: Compression): Promise<string> {
  const tool = await firstTool(commands);
  if (!tool) {
    throw new AutotestError('ERR_TOOL', `no ${compression} tool found on PATH (looked for ${commands.join(', ')})`, {
      hint: `install one (apt-get install ${commands[0] ?? compression}) or set compression to gzip`,
    });
  }
  return tool;
}

const toolFailed = (why: string): AutotestError => new AutotestError('ERR_TOOL', why);

/** The command line of an external compressor; `threads` caps a parallel bzip2's threads (default: all cores). */
export async function compressorCommand(
  compression: Exclude<Compression, 'gzip'>,
  options: { threads?: number } = {},
): Promise<{ command: string; args: string[] }> {
  if (compression === 'zstd') return { command: await requireTool(['zstd'], compression), args: ['-q', '-c', '-T0', '-10'] };
  const tool = await requireTool(BZIP2_TOOLS, compression);
  const threads = options.threads === undefined ? [] : tool === 'lbzip2' ? [`-n${options.threads}`] : tool === 'pbzip2' ? [`-p${options.threads}`] : [];
  return { command: tool, args: ['-9', ...threads, '-c'] };
}

/**
 * The command line that compresses the files named after it, each FILE into FILE + `suffix`
 * (created, never over an existing file, with FILE's mode), keeping FILE: a run takes several
 * files at once, one after the other on one thread. The bytes are those of the same compressor
 * given the file on stdin (checked for lbzip2 and bzip2: a bzip2 stream holds no name or time).
 */
export async function fileCompressorCommand(compression: Exclude<Compression, 'gzip'>): Promise<{ command: string; args: string[]; suffix: string }> {
  if (compression === 'zstd') return { command: await requireTool(['zstd'], compression), args: ['-q', '-T1', '-10'], suffix: '.zst' };
  const tool = await requireTool(BZIP2_TOOLS, compression);
  const threads = tool === 'lbzip2' ? ['-n1'] : tool === 'pbzip2' ? ['-p1'] : [];
  return { command: tool, args: ['-9', ...threads, '-k'], suffix: '.bz2' };
}

/**
 * A compressor; `threads` caps a parallel bzip2's threads (default: all cores). The packager
 * runs one package per core with one thread each, and gives every core only to a package big
 * enough to be the long pole: threads beyond the cores only cost context switches.
 */
export async function createCompressor(compression: Compression, options: { threads?: number } = {}): Promise<Filter> {
  if (compression === 'gzip') return zlibFilter(createGzip({ level: 6 }), 'zlib-gzip');
  const { command, args } = await compressorCommand(compression, options);
  return spawnFilter(command, args, 'compress', toolFailed);
}

/** A decompressor for `source` (named in its errors): a bad stream is ERR_CORRUPT_ARCHIVE. */
export async function createDecompressor(compression: Compression, source: string): Promise<Filter> {
  const corrupt = (why: string): AutotestError =>
    new AutotestError('ERR_CORRUPT_ARCHIVE', `${source}: cannot decompress: ${why}`, {
      hint: 'the tarball is damaged or truncated; fetch it again',
    });
  switch (compression) {
    case 'gzip':
      return zlibFilter(createGunzip(), 'zlib-gunzip');
    case 'bzip2':
      return spawnFilter(await requireTool(BZIP2_TOOLS, compression), ['-d', '-c'], 'decompress', corrupt);
    case 'zstd':
      return spawnFilter(await requireTool(['zstd'], compression), ['-q', '-d', '-c'], 'decompress', corrupt);
  }
}

/** Which compression a tarball uses, from its magic bytes. */
export function sniffCompression(head: Buffer): Compression | undefined {
  if (head.length >= 3 && head.toString('latin1', 0, 3) === 'BZh') return 'bzip2';
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  return undefined;
}
