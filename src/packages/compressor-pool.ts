import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { lstat, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Compression } from './compression.js';
import { AutotestError, errnoCode } from '../errors.js';
import { fileCompressorCommand } from './compress.js';

/**
 * A small shell that runs the compressor once per request over the files the request names.
 * A request is a count and that many file names, one per line; the answer one line: 0, or the
 * compressor's exit status and the start of what it wrote to stderr (read back only then).
 * The files are read into the arguments of a subshell, so each run starts from the bare
 * command; the compressor gets /dev/null as stdin, never the requests that follow.
 *
 * Why a shell in between: every spawn from the packager forks a Node.js process of about
 * 100 MB, copying its page tables on the event loop (about 4 ms each), while the shell forks
 * in a fraction of that, on a core of its own. Why several files per run: a compressor's
 * start (its threads, its block memory) costs about 1.3 ms of CPU, a quarter of a small
 * package's whole compression; one run over the small packages queued at once pays it once.
 */
const HELPER_SCRIPT = [
  'err=$1; shift',
  'while IFS= read -r count; do',
  '  case $count in ""|*[!0-9]*) exit 2;; esac',
  '  (',
  '    i=0',
  '    while [ "$i" -lt "$count" ] && IFS= read -r src; do set -- "$@" "$src"; i=$((i + 1)); done',
  '    [ "$i" -eq "$count" ] || exit 2',
  // The braces send the shell's own complaints (a compressor not found) to $err too.
  '    if { "$@" </dev/null; } 2>|"$err"; then echo 0; else echo "$? $(head -c 2048 "$err" | tr -s \'\\n\' \' \')"; fi',
  '  ) || exit 2',
  'done',
].join('\n');

/** Compressors run from long-lived helpers, one run at a time each. */
export interface CompressorPool {
  /** The compressor, for messages and the manifest. */
  readonly tool: string;
  /** What the compressor appends to a file's name for its output: `.bz2`, `.zst`. */
  readonly suffix: string;
  /**
   * Compresses the file `source` (its size `bytes`, mode 0644, kept) into `source` + suffix,
   * created (never over an existing file) with the source's mode; resolves to that path.
   */
  compressFile(source: string, bytes: number): Promise<string>;
  /**
   * No more files will come than those queued and those about to be: from now on a run takes
   * at most a fair share of all the helpers' slots, so that the helpers end together.
   */
  finishing(): void;
  /**
   * Starts helpers now, up to `files` (the files that may come: no more helpers than that
   * are ever busy) and the pool's size, so that their start overlaps the writing of the first
   * tar files rather than follows it.
   */
  start(files?: number): void;
  /** Ends the helpers once their work is done. */
  close(): Promise<void>;
}

interface Job {
  source: string;
  bytes: number;
  /** Run alone: after a run of several failed, each goes again alone so that its own error is known. */
  alone: boolean;
  settle: (result: string | Error) => void;
}

interface Helper {
  child: ChildProcessWithoutNullStreams;
  errFile: string;
  /** The runs sent and not answered, in the order sent. */
  runs: Job[][];
  /** The end of what the shell itself wrote to stderr. */
  stderr: string;
  exited: Promise<void>;
  dead: boolean;
}

/**
 * Runs a helper holds at once: the one it runs and the next, which it starts the moment the
 * first ends, without waiting for the event loop to hear of it and answer.
 */
const RUNS_PER_HELPER = 2;
/**
 * A run takes queued files up to this many tar bytes (about 0.2 s of one core) and a fair share
 * of what is queued, so that no core waits long at the end. Between two runs a helper's core
 * idles for the compressor's exit and the next one's start, about 3 ms: at 1 MB a run, on a
 * real-shaped tree, that was 5% of the cores' time.
 */
const RUN_MAX_BYTES = 4 * 1024 * 1024;
/** The smallest share of a run once the pool is finishing: below it, a compressor's start and exit weigh. */
const RUN_MIN_BYTES = 256 * 1024;
const RUN_MAX_FILES = 64;

function startHelper(
  cwd: string,
  command: string,
  args: string[],
  errFile: string,
  onAnswer: (helper: Helper, line: string) => void,
  onExit: (helper: Helper, why: string) => void,
): Helper {
  // The compressor runs in the work folder, on names relative to it (bzip2 refuses names over
  // 1024 characters), without the options LBZIP2, BZIP2 and BZIP would add to its own (-c
  // would write the output into the answers).
  const env = { ...process.env };
  for (const name of ['LBZIP2', 'BZIP2', 'BZIP']) Reflect.deleteProperty(env, name);
  const child = spawn('sh', ['-c', HELPER_SCRIPT, 'sh', errFile, command, ...args], { cwd, env, stdio: ['pipe', 'pipe', 'pipe'] });
  const helper: Helper = { child, errFile, runs: [], stderr: '', exited: Promise.resolve(), dead: false };
  let pending = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    pending += chunk;
    let newline = pending.indexOf('\n');
    while (newline !== -1) {
      onAnswer(helper, pending.slice(0, newline));
      pending = pending.slice(newline + 1);
      newline = pending.indexOf('\n');
    }
  });
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => {
    helper.stderr = (helper.stderr + chunk).slice(-2048);
  });
  // A helper that exits stops stdin early; what it was asked fails through onExit.
  child.stdin.on('error', () => undefined);
  helper.exited = new Promise((resolve) => {
    const end = (why: string): void => {
      if (helper.dead) return;
      helper.dead = true;
      onExit(helper, why);
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

/** The compressor's answer for a failed run, as an error naming the file. */
function runFailed(command: string, source: string, answer: string): AutotestError {
  const space = answer.indexOf(' ');
  const status = Number(space === -1 ? answer : answer.slice(0, space));
  const why = status > 128 ? `killed by signal ${String(status - 128)}` : `exit code ${String(status)}`;
  const said = space === -1 ? '' : answer.slice(space + 1).trim();
  return new AutotestError('ERR_TOOL', `${command} failed to compress ${source} (${why})${said ? `: ${said.slice(0, 2048)}` : ''}`);
}

/**
 * Up to `size` helpers (started when first needed, replaced when one dies), each running
 * `compression`'s compressor on one thread; `workDir` holds their stderr files. Files wait
 * in order; a helper with room takes the next one, with the small files queued behind it
 * (up to RUN_MAX_BYTES, and a fair share when several helpers have room) in the same run.
 */
export async function createCompressorPool(compression: Exclude<Compression, 'gzip'>, options: { size: number; workDir: string }): Promise<CompressorPool> {
  const { command, args, suffix } = await fileCompressorCommand(compression);
  return new Pool(command, args, suffix, options.size, path.resolve(options.workDir));
}

class Pool implements CompressorPool {
  private readonly helpers: Helper[] = [];
  private readonly queued: Job[] = [];
  private started = 0;
  private closed = false;
  private lastFiles = false;

  constructor(
    readonly tool: string,
    private readonly args: string[],
    readonly suffix: string,
    private readonly size: number,
    private readonly workDir: string,
  ) {}

  async compressFile(source: string, bytes: number): Promise<string> {
    if (this.closed) throw new Error('compressor pool used after close');
    // Programmer error: the name sent must not hold a newline, which would split the request.
    if (!path.isAbsolute(source) || this.nameSent(source).includes('\n')) throw new Error(`not a path the compressor can be sent: ${JSON.stringify(source)}`);
    // The compressor would refuse it too; checked first, what is there is never taken for a partial output and removed.
    const output = source + this.suffix;
    const there = await lstat(output).then(
      () => true,
      (error: unknown) => errnoCode(error) !== 'ENOENT',
    );
    if (there) {
      throw new AutotestError('ERR_TOOL', `${output} is there already: the compressor writes only new files`, {
        hint: 'remove it if nothing else is writing there, and run again',
      });
    }
    return new Promise((resolve, reject) => {
      this.queued.push({
        source,
        bytes,
        alone: false,
        settle: (result) => {
          if (result instanceof Error) reject(result);
          else resolve(result);
        },
      });
      this.dispatch();
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const helper of this.helpers) helper.child.stdin.end();
    await Promise.all(this.helpers.map((helper) => helper.exited));
    await Promise.all(this.helpers.map((helper) => rm(helper.errFile, { force: true })));
  }

  /** The name the helper, in the work folder, is sent for `source`: `./` and the name inside the work folder, or the absolute path. */
  private nameSent(source: string): string {
    const inside = path.relative(this.workDir, source);
    return inside === '' || inside.startsWith('..') || path.isAbsolute(inside) ? source : `./${inside}`;
  }

  /** Sends queued files to every helper with room, starting helpers up to the pool's size. */
  private dispatch(): void {
    for (let i = this.helpers.length - 1; i >= 0; i -= 1) if (this.helpers[i]?.dead === true) this.helpers.splice(i, 1);
    while (this.queued.length > 0) {
      const helper = this.roomiest();
      if (!helper) return;
      const run = this.takeRun();
      helper.runs.push(run);
      helper.child.stdin.write(`${String(run.length)}\n${run.map((job) => `${this.nameSent(job.source)}\n`).join('')}`);
    }
  }

  /** The helper with the fewest runs out, if it has room; a new one while the pool is not full. */
  private roomiest(): Helper | undefined {
    let best: Helper | undefined;
    for (const helper of this.helpers) if (!best || helper.runs.length < best.runs.length) best = helper;
    if (best?.runs.length === 0) return best;
    if (this.helpers.length < this.size) return this.newHelper();
    return best && best.runs.length < RUNS_PER_HELPER ? best : undefined;
  }

  finishing(): void {
    this.lastFiles = true;
  }

  start(files = this.size): void {
    if (this.closed) throw new Error('compressor pool started after close');
    const wanted = Math.min(this.size, files);
    while (this.helpers.length < wanted) this.newHelper();
  }

  private newHelper(): Helper {
    this.started += 1;
    const helper = startHelper(
      this.workDir,
      this.tool,
      this.args,
      path.join(this.workDir, `compressor-${String(this.started)}.err`),
      (h, line) => {
        this.answered(h, line);
      },
      (h, why) => {
        this.lost(h, why);
      },
    );
    this.helpers.push(helper);
    return helper;
  }

  /**
   * The next file, with the small ones queued behind it up to the run's bounds and a fair
   * share of the queue's bytes: split among the helpers' free slots while more files are to
   * come, among all their slots once the pool is finishing. A run sent to a helper cannot be
   * taken back: at one run per free slot to the end, the last run sent often held 2 MB, a
   * core's 0.1 s alone while the other core had nothing left.
   */
  private takeRun(): Job[] {
    let room = 0;
    for (const helper of this.helpers) room += RUNS_PER_HELPER - helper.runs.length;
    room += (this.size - this.helpers.length) * RUNS_PER_HELPER;
    let queuedBytes = 0;
    for (const job of this.queued) queuedBytes += job.bytes;
    const share = this.lastFiles
      ? Math.min(RUN_MAX_BYTES, Math.max(RUN_MIN_BYTES, Math.ceil(queuedBytes / (this.size * RUNS_PER_HELPER))))
      : Math.min(RUN_MAX_BYTES, Math.ceil(queuedBytes / Math.max(1, room)));
    const first = this.queued.shift();
    if (!first) return [];
    const run = [first];
    let bytes = first.bytes;
    while (!first.alone && run.length < RUN_MAX_FILES) {
      const next = this.queued[0];
      if (!next || next.alone || bytes + next.bytes > share) break;
      run.push(next);
      bytes += next.bytes;
      this.queued.shift();
    }
    return run;
  }

  private answered(helper: Helper, line: string): void {
    const run = helper.runs.shift();
    if (!run) return;
    if (line === '0') {
      for (const job of run) job.settle(job.source + this.suffix);
    } else if (run.length === 1 && run[0]) void this.fail(run[0], runFailed(this.tool, run[0].source, line));
    else void this.again(run);
    this.dispatch();
  }

  /**
   * A helper died. The run it was running fails if it was one file alone, and goes again one
   * file at a time if it held several; the run it held next never started and is queued again.
   */
  private lost(helper: Helper, why: string): void {
    const [running, ...held] = helper.runs.splice(0);
    this.queued.unshift(...held.flat());
    if (running && running.length > 1) void this.again(running);
    else if (running?.[0]) {
      const said = helper.stderr ? `: ${helper.stderr.trim()}` : '';
      void this.fail(running[0], new AutotestError('ERR_TOOL', `the shell running ${this.tool} stopped (${why})${said}`));
    }
    this.dispatch();
  }

  /** Fails one file, once whatever the compressor wrote of its output is gone. */
  private async fail(job: Job, error: Error): Promise<void> {
    await rm(job.source + this.suffix, { force: true }).catch(() => undefined);
    job.settle(error);
  }

  /** Removes what a failed run of several files wrote, then queues each file again, alone, at the front. */
  private async again(run: Job[]): Promise<void> {
    try {
      await Promise.all(run.map((job) => rm(job.source + this.suffix, { force: true })));
    } catch (error) {
      for (const job of run) job.settle(error instanceof Error ? error : new Error(String(error)));
      return;
    }
    this.queued.unshift(...run.map((job) => ({ ...job, alone: true })));
    this.dispatch();
  }
}
