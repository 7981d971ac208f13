import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import type { Compression } from './compression.js';
import { AutotestError } from '../errors.js';
import { compressorCommand } from './compress.js';

/**
 * A small shell that runs the compressor once per request, each run reading a finished tar
 * file and creating a new file (`set -C`: never over an existing one; umask: 0644). A request
 * is two lines (source, destination), the answer one line: 0, or the compressor's exit status
 * and the start of what it wrote to stderr (read back only then, before the next run).
 *
 * Why a shell in between: every spawn from the packager forks a Node.js process of about
 * 100 MB, copying its page tables on the event loop (about 4 ms each, 0.5 s for the 135
 * packages of a real client tree), while the shell forks in a fraction of that, on a core of
 * its own. A compressor reading a file through stdin writes the same bytes as one fed by a
 * pipe (checked for lbzip2, bzip2 and zstd), so the way a package goes never changes its bytes.
 */
const HELPER_SCRIPT = [
  'err=$1; shift',
  'umask 022; set -C',
  'while IFS= read -r src && IFS= read -r dest; do',
  // The braces send the shell's own complaints (a source gone, a destination there) to $err too.
  '  if { "$@" <"$src" >"$dest"; } 2>|"$err"; then echo 0; else echo "$? $(head -c 2048 "$err" | tr -s \'\\n\' \' \')"; fi',
  'done',
].join('\n');

/** Compressors run from long-lived helpers, one compression at a time each. */
export interface CompressorPool {
  /** The compressor, for messages and the manifest. */
  readonly tool: string;
  /** Compresses the file `source` into `dest`, created (never overwritten) with mode 0644. */
  compressFile(source: string, dest: string): Promise<void>;
  /** Ends the helpers once their work is done. */
  close(): Promise<void>;
}

interface Helper {
  child: ChildProcessWithoutNullStreams;
  errFile: string;
  /** The answers awaited, in the order of the requests sent. */
  waiting: ((line: string | Error) => void)[];
  /** The end of what the shell itself wrote to stderr (a refused redirection, say). */
  stderr: string;
  exited: Promise<void>;
  dead: boolean;
}

function startHelper(command: string, args: string[], errFile: string): Helper {
  const child = spawn('sh', ['-c', HELPER_SCRIPT, 'sh', errFile, command, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  const helper: Helper = { child, errFile, waiting: [], stderr: '', exited: Promise.resolve(), dead: false };
  let pending = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    pending += chunk;
    let newline = pending.indexOf('\n');
    while (newline !== -1) {
      helper.waiting.shift()?.(pending.slice(0, newline));
      pending = pending.slice(newline + 1);
      newline = pending.indexOf('\n');
    }
  });
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => {
    helper.stderr = (helper.stderr + chunk).slice(-2048);
  });
  // A helper that exits stops stdin early; what it was asked fails through its answer.
  child.stdin.on('error', () => undefined);
  helper.exited = new Promise((resolve) => {
    const end = (why: string): void => {
      helper.dead = true;
      const error = new AutotestError('ERR_TOOL', `the shell running ${command} stopped (${why})${helper.stderr ? `: ${helper.stderr.trim()}` : ''}`);
      for (const waiting of helper.waiting.splice(0)) waiting(error);
      resolve();
    };
    child.on('error', (error) => {
      end(error.message);
    });
    child.on('close', (code, signal) => {
      end(signal ? `killed by ${signal}` : `exit code ${String(code)}`);
    });
  });
  return helper;
}

/**
 * Requests a helper holds at once: the one it runs and the next, which it starts the moment
 * the first ends, without waiting for the event loop to hear of it and answer.
 */
const REQUESTS_PER_HELPER = 2;

/**
 * Up to `size` helpers (started when first needed, replaced when one dies), each running
 * `compression`'s compressor on one thread; `workDir` holds their stderr files. A request
 * goes to the helper with the fewest requests out, and waits (in order) while every helper
 * holds REQUESTS_PER_HELPER.
 */
export async function createCompressorPool(compression: Exclude<Compression, 'gzip'>, options: { size: number; workDir: string }): Promise<CompressorPool> {
  const { command, args } = await compressorCommand(compression, { threads: 1 });
  const helpers: Helper[] = [];
  const queue: (() => void)[] = [];
  let started = 0;
  let closed = false;

  const leastBusy = (): Helper | undefined => {
    for (let i = helpers.length - 1; i >= 0; i -= 1) if (helpers[i]?.dead === true) helpers.splice(i, 1);
    let best: Helper | undefined;
    for (const helper of helpers) if (!best || helper.waiting.length < best.waiting.length) best = helper;
    if (best && best.waiting.length === 0) return best;
    if (helpers.length < options.size) {
      started += 1;
      const helper = startHelper(command, args, path.join(options.workDir, `compressor-${started}.err`));
      helpers.push(helper);
      return helper;
    }
    return best && best.waiting.length < REQUESTS_PER_HELPER ? best : undefined;
  };
  const acquire = async (): Promise<Helper> => {
    const helper = leastBusy();
    if (helper) return helper;
    await new Promise<void>((resolve) => {
      queue.push(resolve);
    });
    return acquire();
  };
  const ask = async (helper: Helper, source: string, dest: string): Promise<string | Error> => {
    try {
      return await new Promise<string | Error>((resolve) => {
        helper.waiting.push(resolve);
        helper.child.stdin.write(`${source}\n${dest}\n`);
      });
    } finally {
      queue.shift()?.();
    }
  };

  return {
    tool: command,
    async compressFile(source, dest) {
      if (closed) throw new Error('compressor pool used after close');
      // Programmer error: our staging paths never hold a newline, which would split the request.
      if (source.includes('\n') || dest.includes('\n')) throw new Error(`a path with a newline cannot be sent to the compressor: ${JSON.stringify(source)}`);
      const helper = await acquire();
      const answer = await ask(helper, source, dest);
      if (answer instanceof Error) throw answer;
      if (answer !== '0') {
        const space = answer.indexOf(' ');
        const status = Number(space === -1 ? answer : answer.slice(0, space));
        const why = status > 128 ? `killed by signal ${String(status - 128)}` : `exit code ${String(status)}`;
        const said = space === -1 ? '' : answer.slice(space + 1).trim();
        throw new AutotestError('ERR_TOOL', `${command} failed to compress ${source} (${why})${said ? `: ${said.slice(0, 2048)}` : ''}`);
      }
    },
    async close() {
      closed = true;
      for (const helper of helpers) helper.child.stdin.end();
      await Promise.all(helpers.map((helper) => helper.exited));
      await Promise.all(helpers.map((helper) => rm(helper.errFile, { force: true })));
    },
  };
}
