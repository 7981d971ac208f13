import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { AutotestError, describeError } from '../errors.js';
import { openControlDir, type ControlSetup } from './control.js';
import { shellCommand } from './quote.js';
import type { ResourceKind, Resources } from '../resources.js';

export interface SshEndpoint {
  user: string | undefined;
  host: string;
  port: number | undefined;
}

export interface RunResult {
  code: number;
  stdout: Buffer;
  stderr: string;
}

export interface RunOptions {
  /** Bytes for the remote command's standard input: a string or a stream. */
  input?: string | Buffer | Readable;
  /** Kills the command after this long; default 120 s. */
  timeoutMs?: number;
  /** Exit codes that are answers, not failures (returned instead of thrown). */
  allowCodes?: readonly number[];
}

const STDOUT_LIMIT = 64 * 1024 * 1024;
const STDERR_LIMIT = 8192;

/**
 * What ssh is told on every call: keyless and never prompting, one master connection per host.
 * The master outlives the run (ControlPersist), so the next run on the host skips the TCP and
 * key exchange (about 0.3 s) that reusing it saves; %C (a hash of the local host, destination,
 * port and user) keeps the socket path short and the same from one run to the next.
 */
function commonOptions(env: NodeJS.ProcessEnv, setup: ControlSetup): string[] {
  const options: string[] = [];
  // Tests and labs with their own ssh_config point here; otherwise ssh reads ~/.ssh/config itself.
  if (env.AUTOTEST_SSH_CONFIG) options.push('-F', env.AUTOTEST_SSH_CONFIG);
  options.push(
    '-o',
    'BatchMode=yes',
    '-o',
    'ControlMaster=auto',
    '-o',
    `ControlPath=${path.join(setup.dir, '%C')}`,
    '-o',
    `ControlPersist=${setup.persistSeconds.toString()}`,
    '-o',
    `ConnectTimeout=${env.AUTOTEST_SSH_CONNECT_TIMEOUT ?? '10'}`,
    '-o',
    'ServerAliveInterval=5',
    '-o',
    'ServerAliveCountMax=3',
  );
  return options;
}

/**
 * The remote command line prints a marker just before the command itself. The login shell runs
 * the account's start-up files first (bash sources ~/.bashrc for every command sshd starts),
 * and whatever they print lands on the same stdout; everything before the marker is theirs and
 * is never taken for data. The marker holds a nonce of this call and printf assembles it, so
 * its bytes never stand in the command line: start-up text that echoes the command (a forced
 * command wrapper, $BASH_EXECUTION_STRING) cannot fake it. No literal newline either: csh
 * refuses one inside quotes.
 */
function dataMarker(): { printf: string; bytes: Buffer } {
  const nonce = randomBytes(12).toString('hex');
  return { printf: `printf 'autotest-%s-data\\n' ${nonce}`, bytes: Buffer.from(`autotest-${nonce}-data\n`) };
}
/** Start-up text kept for error messages; more of it is read and dropped. */
const STARTUP_TEXT_KEPT = 2048;

/** What came before the command's own output on an SSH channel. */
export interface StartupText {
  /** The text the login shell's start-up files printed (the first 2 KiB of it). */
  text: string;
  /** False when the channel ended before the command started (a start-up file that exits). */
  started: boolean;
}

const startupTexts = new WeakMap<ChildProcess, Promise<StartupText>>();

/**
 * Reads `stdout` up to and including the marker and gives the command's own bytes back to the
 * stream (unshift), so whoever consumes it next sees only them, in order, and the child's
 * 'close' still comes after its last byte.
 */
function skipStartupText(stdout: Readable, marker: Buffer): Promise<StartupText> {
  return new Promise((resolve) => {
    let seen: Buffer = Buffer.alloc(0);
    let text = '';
    const finish = (result: StartupText): void => {
      stdout.off('readable', onReadable);
      stdout.off('end', onEnd);
      stdout.off('error', onEnd);
      resolve(result);
    };
    const keep = (bytes: Buffer): void => {
      if (text.length < STARTUP_TEXT_KEPT) text += bytes.toString('utf8').slice(0, STARTUP_TEXT_KEPT - text.length);
    };
    function onReadable(): void {
      for (let chunk = stdout.read() as Buffer | null; chunk !== null; chunk = stdout.read() as Buffer | null) {
        seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk]);
        const at = seen.indexOf(marker);
        if (at >= 0) {
          keep(seen.subarray(0, at));
          const rest = seen.subarray(at + marker.length);
          finish({ text: text.trim(), started: true });
          if (rest.length > 0) stdout.unshift(rest);
          return;
        }
        // Keep only what could be the start of a marker split across chunks.
        const cut = Math.max(0, seen.length - marker.length + 1);
        keep(seen.subarray(0, cut));
        seen = seen.subarray(cut);
      }
    }
    function onEnd(): void {
      keep(seen);
      finish({ text: text.trim(), started: false });
    }
    stdout.on('readable', onReadable);
    stdout.on('end', onEnd);
    stdout.on('error', onEnd);
  });
}

/** What the host's start-up files printed before `child`'s command, once its stdout has started. */
export function startupTextOf(child: ChildProcess): Promise<StartupText> {
  return startupTexts.get(child) ?? Promise.resolve({ text: '', started: true });
}

/** The likely cause of a failure on a channel whose start-up files printed or exited. */
export function describeStartupText(host: string, startup: StartupText): string {
  if (startup.started && startup.text === '') return '';
  const printed = startup.text === '' ? '' : `; its login shell's start-up files printed ${JSON.stringify(startup.text.slice(0, 200))}`;
  return startup.started
    ? `${printed} (left out of the data)`
    : `; the command never started on ${host}${printed}: a start-up file (~/.bashrc, ~/.profile) of the SSH account exits or fails before the command runs`;
}

export function describeEndpoint(endpoint: SshEndpoint): string {
  return `${endpoint.user ? `${endpoint.user}@` : ''}${endpoint.host}${endpoint.port ? `:${endpoint.port.toString()}` : ''}`;
}

/**
 * One remote host reached through the system's OpenSSH. Every command goes as an argument
 * vector quoted by shellQuote; the first call opens a master connection that every later
 * call of the run shares.
 */
export class SshHost {
  readonly name: string;
  private connecting: Promise<void> | undefined;

  /** `control` says where the master sockets are: those of the SshMasters that made this host. */
  constructor(
    readonly endpoint: SshEndpoint,
    private readonly control: (env: NodeJS.ProcessEnv) => ControlSetup,
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {
    this.name = describeEndpoint(endpoint);
  }

  /** ssh's own arguments up to and including the destination. */
  private sshArgs(): string[] {
    return [...commonOptions(this.env, this.control(this.env)), ...destination(this.endpoint)];
  }

  /** Opens the master connection once, so parallel commands all share it. */
  connect(): Promise<void> {
    this.connecting ??= this.run(['true'], { timeoutMs: 60_000 }).then(
      () => undefined,
      (error: unknown) => {
        this.connecting = undefined;
        throw error;
      },
    );
    return this.connecting;
  }

  /**
   * Starts `argv` on the host; the caller owns the child and its streams. Resolves once the
   * command has started, with its stdout holding only the command's own output (what the
   * account's start-up files printed is in startupTextOf(child)); rejects, naming the likely
   * cause, when it never starts: ssh cannot connect, or a start-up file exits or hangs.
   * Wait for the child's end with whenClosed(child): it may be over before this resolves.
   */
  async spawn(argv: readonly string[], startTimeoutMs = 120_000): Promise<ChildProcess> {
    // `;` and printf work in every login shell an account may have (sh, bash, zsh, csh, fish).
    const marker = dataMarker();
    const line = `${marker.printf}; exec ${shellCommand(argv)}`;
    const child = spawn('ssh', [...this.sshArgs(), line], { stdio: ['pipe', 'pipe', 'pipe'], env: this.env });
    const closed = whenClosed(child);
    // Read from the start: start-up files that write a lot on stderr would otherwise fill the
    // pipe and stall the login. The first 8 KiB before the command starts go into errors.
    let startupStderr = '';
    let starting = true;
    child.stderr.on('data', (chunk: Buffer) => {
      if (starting && startupStderr.length < STDERR_LIMIT) startupStderr += chunk.toString('utf8');
    });
    // Held from the start, so a missing ssh binary is reported below instead of thrown.
    const failed = new Promise<Error>((resolve) => child.on('error', resolve));
    const startup = skipStartupText(child.stdout, marker.bytes);
    startupTexts.set(child, startup);
    let timer: NodeJS.Timeout | undefined;
    const first = await Promise.race([
      startup,
      failed,
      new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => {
          resolve('timeout');
        }, startTimeoutMs);
      }),
    ]).finally(() => {
      clearTimeout(timer);
      starting = false;
    });
    if (first === 'timeout' || first instanceof Error) {
      child.kill('SIGKILL');
      if (first instanceof Error) {
        throw new AutotestError('ERR_SSH', `cannot run ssh to ${this.name}: ${describeError(first)}`, {
          hint: 'install OpenSSH (apt-get install openssh-client)',
          cause: first,
        });
      }
      throw new AutotestError('ERR_SSH', `ssh ${this.name}: "${argv[0] ?? ''}" did not start within ${(startTimeoutMs / 1000).toString()} s`, {
        hint: "the login is stuck: check the network, and the SSH account's start-up files (~/.bashrc, ~/.profile), which run before every command",
      });
    }
    if (first.started) return child;
    const { code } = await closed;
    throw sshFailure(this.name, argv, { code, stderr: startupStderr.slice(0, STDERR_LIMIT).trim() }, first);
  }

  /** Runs `argv` on the host and collects its output; a failure names the host and what ssh said. */
  async run(argv: readonly string[], options: RunOptions = {}): Promise<RunResult> {
    // One deadline for the login and the command together.
    const timeoutMs = options.timeoutMs ?? 120_000;
    const deadline = performance.now() + timeoutMs;
    const child = await this.spawn(argv, timeoutMs);
    const chunks: Buffer[] = [];
    let size = 0;
    let stderr = '';
    const state = { timedOut: false };
    child.stdout?.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= STDOUT_LIMIT) chunks.push(chunk);
      else child.kill('SIGKILL');
    });
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      if (stderr.length < STDERR_LIMIT) stderr += chunk;
    });
    // The remote side may stop reading early; its answer comes through the exit code.
    child.stdin?.on('error', () => undefined);
    const input = options.input;
    if (input === undefined) child.stdin?.end();
    else if (typeof input === 'string' || Buffer.isBuffer(input)) child.stdin?.end(input);
    else if (child.stdin) {
      // A read error of the input ends the command; the exit code then tells.
      input.on('error', () => child.kill('SIGKILL'));
      input.pipe(child.stdin);
    }
    const timer = setTimeout(
      () => {
        state.timedOut = true;
        child.kill('SIGKILL');
      },
      Math.max(0, deadline - performance.now()),
    );
    const { code } = await whenClosed(child).finally(() => {
      clearTimeout(timer);
    });
    if (input !== undefined && typeof input !== 'string' && !Buffer.isBuffer(input)) {
      input.unpipe();
      input.destroy();
    }
    if (state.timedOut) {
      throw new AutotestError(
        'ERR_SSH',
        `ssh ${this.name}: "${argv[0] ?? ''}" took more than ${((options.timeoutMs ?? 120_000) / 1000).toString()} s and was stopped`,
        {
          hint: 'check the network and that the host is not overloaded',
        },
      );
    }
    if (size > STDOUT_LIMIT) throw new AutotestError('ERR_SSH', `ssh ${this.name}: the answer was larger than ${STDOUT_LIMIT.toString()} bytes`);
    const result = { code, stdout: Buffer.concat(chunks), stderr: stderr.trim() };
    if (code === 0 || options.allowCodes?.includes(code)) return result;
    throw sshFailure(this.name, argv, result, await startupTextOf(child));
  }
}

const closings = new WeakMap<ChildProcess, Promise<{ code: number; signal: NodeJS.Signals | null }>>();

/**
 * The child's end (exit code, 128 when killed by a signal), however late it is asked for: the
 * listener is put on at the first call, and SshHost.spawn makes that call as it starts the child.
 */
export function whenClosed(child: ChildProcess): Promise<{ code: number; signal: NodeJS.Signals | null }> {
  let closing = closings.get(child);
  if (!closing) {
    closing = new Promise((resolve) => {
      child.on('close', (exitCode, signal) => {
        resolve({ code: exitCode ?? (signal ? 128 : 1), signal });
      });
    });
    closings.set(child, closing);
  }
  return closing;
}

/** ssh exits 255 for its own failures (cannot connect, refused key); anything else is the command's. */
export function sshFailure(
  name: string,
  argv: readonly string[],
  result: { code: number; stderr: string },
  startup: StartupText = { text: '', started: true },
): AutotestError {
  if (result.code === 255) {
    return new AutotestError('ERR_SSH_CONNECT', `ssh ${name}: cannot connect${result.stderr ? `: ${result.stderr}` : ''}`, {
      hint: 'check the host, that keyless (key-based, BatchMode) login works with "ssh HOST true", and ~/.ssh/config',
    });
  }
  if (!startup.started) {
    return new AutotestError(
      'ERR_SSH',
      `ssh ${name}: "${argv[0] ?? ''}" exited with code ${result.code.toString()}${describeStartupText(name, startup)}${result.stderr ? `: ${result.stderr}` : ''}`,
      {
        hint: 'make the account\'s start-up files print nothing and return early for non-interactive shells (for bash: [ -z "$PS1" ] && return at the top of ~/.bashrc)',
      },
    );
  }
  return new AutotestError(
    'ERR_SSH',
    `ssh ${name}: "${argv[0] ?? ''}" failed with exit code ${result.code.toString()}${describeStartupText(name, startup)}${result.stderr ? `: ${result.stderr}` : ''}`,
    {
      hint: 'check the folder and its permissions on the host, and that sh, coreutils and flock are installed there',
    },
  );
}

/**
 * The SSH hosts of one owner (a command, a server), one per endpoint, so one run keeps one
 * master connection per host; the socket folder is chosen at the first command.
 */
export class SshMasters {
  private control: ControlSetup | undefined;
  private readonly open = new Map<string, SshHost>();

  /** The shared SshHost for an endpoint. */
  host(endpoint: SshEndpoint): SshHost {
    const key = `${endpoint.user ?? ''}@${endpoint.host}:${endpoint.port?.toString() ?? ''}`;
    let host = this.open.get(key);
    if (!host) {
      host = new SshHost(endpoint, (env) => (this.control ??= openControlDir(env)));
      this.open.set(key, host);
    }
    return host;
  }

  /**
   * Ends the use of these hosts. Masters in the per-user folder stay for the next run and
   * expire on their own after ControlPersist idle seconds (or die with their server); those
   * of a per-run folder (AUTOTEST_SSH_CONTROL_PERSIST=0) are closed and the folder removed.
   */
  async close(): Promise<void> {
    const hosts = [...this.open.values()];
    this.open.clear();
    const setup = this.control;
    this.control = undefined;
    if (!setup?.perRun) return;
    const dir = setup.dir;
    await Promise.all(
      hosts.map(
        (host) =>
          new Promise<void>((resolve) => {
            const child = spawn('ssh', [...commonOptionsFor(dir), '-O', 'exit', ...destination(host.endpoint)], { stdio: 'ignore' });
            const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
            child.on('error', () => {
              clearTimeout(timer);
              resolve();
            });
            child.on('close', () => {
              clearTimeout(timer);
              resolve();
            });
          }),
      ),
    );
    rmSync(dir, { recursive: true, force: true });
  }
}

export const SSH_MASTERS: ResourceKind<SshMasters> = {
  name: 'SSH master connections',
  create: () => new SshMasters(),
  close: (masters) => masters.close(),
};

/** The SshHost `resources` keep for an endpoint. */
export function sshHost(endpoint: SshEndpoint, resources: Resources): SshHost {
  return resources.get(SSH_MASTERS).host(endpoint);
}

function commonOptionsFor(dir: string): string[] {
  const options: string[] = [];
  if (process.env.AUTOTEST_SSH_CONFIG) options.push('-F', process.env.AUTOTEST_SSH_CONFIG);
  options.push('-o', `ControlPath=${path.join(dir, '%C')}`);
  return options;
}

/** The host was validated (no leading "-"); "--" ends ssh's options all the same. */
function destination(endpoint: SshEndpoint): string[] {
  const args: string[] = [];
  if (endpoint.port !== undefined) args.push('-p', endpoint.port.toString());
  if (endpoint.user !== undefined) args.push('-l', endpoint.user);
  args.push('--', endpoint.host);
  return args;
}
