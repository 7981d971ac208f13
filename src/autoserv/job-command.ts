import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type { Readable, Writable } from 'node:stream';
import { whenClosed } from '../ssh/session.js';
import { CHANNEL_REQUEST_PREFIX } from '../client/channel.js';
import type { TestHost } from './host.js';

/**
 * The job as one command on the host (a warm host costs this command and nothing else). Run by
 * sh with positional arguments only: $1 the host folder, $2 the md5 the installed client must
 * carry in client/.checksum (empty: not checked, it was just installed), $3 and $4 the CA
 * bundle's path on the host and its md5 (or empty), $5 the frame nonce, $6 the job id, $7 the
 * control file in base64 (empty: already written to its place), $8 client.ini in base64,
 * $9 "channel" to serve packages over standard input and output.
 *
 * A client that is missing or not the one asked for, or a CA bundle that is missing or
 * stale, exits STALE_CLIENT having written nothing: autoserv then installs and runs again.
 * Otherwise standard output is: a READY frame line, the job's own output (channel requests and
 * its JSON report), a RESULTS frame line with the job's exit code, then the results folder as
 * a tar stream to the end. Standard input is the job's (the autoserv channel); nothing before
 * the job reads it.
 */
const RUN_JOB = `dir=$1; want=$2; ca=$3; casum=$4; mark=$5; id=$6; control=$7; ini=$8; channel=$9
if [ -n "$want" ] && [ "$(cat "$dir/client/.checksum" 2>/dev/null)" != "$want" ]; then exit 42; fi
if [ -n "$ca" ] && ! echo "$casum  $ca" | md5sum -c --status 2>/dev/null; then exit 42; fi
ctl=$dir/control-$id.mjs; cfg=$dir/client-$id.ini; res=$dir/results/$id
if [ -n "$control" ]; then printf '%s' "$control" | base64 -d > "$ctl" || exit 10; fi
printf '%s' "$ini" | base64 -d > "$cfg" || exit 10
set -- "$dir/client/bin/autotest-client.mjs" client run "$ctl" --config "$cfg" --install-dir "$dir" --results "$res" --json
if [ "$channel" = channel ]; then set -- "$@" --autoserv-channel; fi
printf '\\036AUTOTEST-READY %s\\n' "$mark"
node "$@"; code=$?
rm -f "$ctl" "$cfg"
printf '\\036AUTOTEST-RESULTS %s %s\\n' "$mark" "$code"
if [ -d "$res" ]; then tar -C "$res" -cf - .; fi
exit 0`;

/** RUN_JOB's exit code for "install the client (or the CA bundle) first; nothing was run". */
const STALE_CLIENT = 42;

/**
 * A control file travels in the command line up to this size (base64): one command line is one
 * argument of the remote login shell, which Linux bounds at 128 KiB (MAX_ARG_STRLEN).
 */
export const CONTROL_ARGUMENT_LIMIT = 64 * 1024;

export interface JobCommand {
  hostDir: string;
  jobId: string;
  /** The md5 the host's client/.checksum must hold; undefined: not checked. */
  clientMd5: string | undefined;
  /** The CA bundle's path on the host and its md5, when fetch_ca_file is set. */
  ca: { file: string; md5: string } | undefined;
  /** The control file, or undefined when it was written to the host before (too large for the command line). */
  control: Buffer | undefined;
  ini: string;
  /** serve_packages_from_autoserv: answer the job's package requests with this. */
  answer: ((payload: string, stdin: Writable) => Promise<void>) | undefined;
  /** Where the results tar stream is unpacked. */
  resultsDir: string;
  onLine: (line: string) => void;
  timeoutMs: number;
}

export type JobOutcome =
  | { kind: 'stale' }
  /**
   * readyAt: when the job started on the host (performance.now()), undefined if it never did;
   * report: the job's standard output (its JSON report); code: the job's exit code, or the
   * command's when it never got to the end.
   */
  | { kind: 'ran'; readyAt: number | undefined; report: string; stderr: string; code: number };

/** The remote path of the control file a job reads (RUN_JOB's own naming). */
export function hostControlFile(hostDir: string, jobId: string): string {
  return `${hostDir}/control-${jobId}.mjs`;
}

/**
 * Runs the job on `host` in one command: client check, control file and config written, the
 * job with its channel, its report and status lines streamed, the results unpacked locally.
 */
export async function runJobCommand(host: TestHost, job: JobCommand): Promise<JobOutcome> {
  const mark = randomBytes(12).toString('hex');
  const child = await host.spawn([
    'sh',
    '-c',
    RUN_JOB,
    'sh',
    job.hostDir,
    job.clientMd5 ?? '',
    job.ca?.file ?? '',
    job.ca?.md5 ?? '',
    mark,
    job.jobId,
    job.control?.toString('base64') ?? '',
    Buffer.from(job.ini).toString('base64'),
    job.answer ? 'channel' : '',
  ]);
  const ready = `\x1eAUTOTEST-READY ${mark}`;
  const resultsLine = new RegExp(`^\\x1eAUTOTEST-RESULTS ${mark} (\\d+)$`);
  return new Promise((resolve, reject) => {
    child.stdin?.on('error', () => undefined);
    if (!job.answer) child.stdin?.end();
    let readyAt: number | undefined;
    let jobCode: number | undefined;
    let answering = Promise.resolve();
    let report = '';
    let stderr = '';
    let untarred: Promise<void> = Promise.resolve();
    const stdout = child.stdout as Readable;
    const onStdoutLine = (line: string): boolean => {
      if (readyAt === undefined) {
        if (line === ready) readyAt = performance.now();
        return false;
      }
      const end = resultsLine.exec(line);
      if (end) {
        jobCode = Number(end[1]);
        return true;
      }
      if (job.answer && child.stdin && line.startsWith(CHANNEL_REQUEST_PREFIX)) {
        const stdin = child.stdin;
        const answer = job.answer;
        const payload = line.slice(CHANNEL_REQUEST_PREFIX.length);
        answering = answering.then(() => answer(payload, stdin));
        return false;
      }
      report += `${line}\n`;
      return false;
    };
    let pending: Buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      for (let newline = pending.indexOf(10); newline !== -1; newline = pending.indexOf(10)) {
        const line = pending.subarray(0, newline).toString('utf8');
        pending = pending.subarray(newline + 1);
        if (onStdoutLine(line)) {
          // The rest of standard output is the results folder as a tar stream.
          stdout.off('data', onData);
          untarred = unpackInto(stdout, pending, job.resultsDir);
          pending = Buffer.alloc(0);
          return;
        }
      }
    };
    stdout.on('data', onData);
    let stderrPending = '';
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      const lines = (stderrPending + chunk).split('\n');
      stderrPending = lines.pop() ?? '';
      for (const line of lines) {
        stderr = `${stderr}${line}\n`.slice(-8192);
        job.onLine(line);
      }
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), job.timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    void whenClosed(child).then(async ({ code }) => {
      clearTimeout(timer);
      child.stdin?.destroy();
      if (stderrPending !== '') job.onLine(stderrPending);
      if (pending.length > 0 && jobCode === undefined) onStdoutLine(pending.toString('utf8'));
      await untarred;
      if (readyAt === undefined && code === STALE_CLIENT) {
        resolve({ kind: 'stale' });
        return;
      }
      resolve({ kind: 'ran', readyAt, report, stderr: stderr.trim(), code: jobCode ?? code });
    });
  });
}

/** Unpacks `head` and then the rest of `stream` (a tar stream) into `dir`; a broken stream leaves what came. */
function unpackInto(stream: Readable, head: Buffer, dir: string): Promise<void> {
  const untar = spawn('tar', ['-xf', '-', '-C', dir], { stdio: ['pipe', 'ignore', 'ignore'] });
  untar.stdin.on('error', () => undefined);
  if (head.length > 0) untar.stdin.write(head);
  stream.pipe(untar.stdin);
  return new Promise((resolve) => {
    untar.on('error', () => {
      resolve();
    });
    untar.on('close', () => {
      resolve();
    });
  });
}
