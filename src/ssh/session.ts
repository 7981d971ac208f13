import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { AutotestError, describeError } from '../errors.js';
import { shellCommand } from './quote.js';

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

let controlDir: string | undefined;
const open = new Map<string, SshHost>();

/** Where this process keeps its ControlMaster sockets; removed by closeSshConnections(). */
function controlPathDir(): string {
  controlDir ??= mkdtempSync(path.join(tmpdir(), 'autotest-ssh-'));
  return controlDir;
}

/** What ssh is told on every call: keyless and never prompting, one master connection per host. */
function commonOptions(env: NodeJS.ProcessEnv): string[] {
  const options: string[] = [];
  // Tests and labs with their own ssh_config point here; otherwise ssh reads ~/.ssh/config itself.
  if (env.AUTOTEST_SSH_CONFIG) options.push('-F', env.AUTOTEST_SSH_CONFIG);
  options.push(
    '-o', 'BatchMode=yes',
    '-o', 'ControlMaster=auto',
    '-o', `ControlPath=${path.join(controlPathDir(), '%C')}`,
    '-o', 'ControlPersist=60',
    '-o', `ConnectTimeout=${env.AUTOTEST_SSH_CONNECT_TIMEOUT ?? '10'}`,
    '-o', 'ServerAliveInterval=5',
    '-o', 'ServerAliveCountMax=3',
  );
  return options;
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

  constructor(readonly endpoint: SshEndpoint, private readonly env: NodeJS.ProcessEnv = process.env) {
    this.name = describeEndpoint(endpoint);
  }

  /** ssh's own arguments up to and including the destination. */
  private sshArgs(): string[] {
    return [...commonOptions(this.env), ...destination(this.endpoint)];
  }

  /** Opens the master connection once, so parallel commands all share it. */
  connect(): Promise<void> {
    this.connecting ??= this.run(['true'], { timeoutMs: 60_000 }).then(() => undefined, (error: unknown) => {
      this.connecting = undefined;
      throw error;
    });
    return this.connecting;
  }

  /** Starts `argv` on the host; the caller owns the child and its streams. */
  spawn(argv: readonly string[]): ChildProcess {
    return spawn('ssh', [...this.sshArgs(), shellCommand(argv)], { stdio: ['pipe', 'pipe', 'pipe'], env: this.env });
  }

  /** Runs `argv` on the host and collects its output; a failure names the host and what ssh said. */
  async run(argv: readonly string[], options: RunOptions = {}): Promise<RunResult> {
    const child = this.spawn(argv);
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
    const timer = setTimeout(() => {
      state.timedOut = true;
      child.kill('SIGKILL');
    }, options.timeoutMs ?? 120_000);
    const code = await new Promise<number>((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (exitCode, signal) => {
        resolve(exitCode ?? (signal ? 128 : 1));
      });
    }).catch((error: unknown) => {
      throw new AutotestError('ERR_SSH', `cannot run ssh to ${this.name}: ${describeError(error)}`, {
        hint: 'install OpenSSH (apt-get install openssh-client)', cause: error,
      });
    }).finally(() => {
      clearTimeout(timer);
    });
    if (input !== undefined && typeof input !== 'string' && !Buffer.isBuffer(input)) {
      input.unpipe();
      input.destroy();
    }
    if (state.timedOut) {
      throw new AutotestError('ERR_SSH', `ssh ${this.name}: "${argv[0] ?? ''}" took more than ${((options.timeoutMs ?? 120_000) / 1000).toString()} s and was stopped`, {
        hint: 'check the network and that the host is not overloaded',
      });
    }
    if (size > STDOUT_LIMIT) throw new AutotestError('ERR_SSH', `ssh ${this.name}: the answer was larger than ${STDOUT_LIMIT.toString()} bytes`);
    const result = { code, stdout: Buffer.concat(chunks), stderr: stderr.trim() };
    if (code === 0 || options.allowCodes?.includes(code)) return result;
    throw sshFailure(this.name, argv, result);
  }
}

/** ssh exits 255 for its own failures (cannot connect, refused key); anything else is the command's. */
export function sshFailure(name: string, argv: readonly string[], result: { code: number; stderr: string }): AutotestError {
  if (result.code === 255) {
    return new AutotestError('ERR_SSH_CONNECT', `ssh ${name}: cannot connect${result.stderr ? `: ${result.stderr}` : ''}`, {
      hint: 'check the host, that keyless (key-based, BatchMode) login works with "ssh HOST true", and ~/.ssh/config',
    });
  }
  return new AutotestError('ERR_SSH', `ssh ${name}: "${argv[0] ?? ''}" failed with exit code ${result.code.toString()}${result.stderr ? `: ${result.stderr}` : ''}`, {
    hint: 'check the folder and its permissions on the host, and that sh, coreutils and flock are installed there',
  });
}

/** The shared SshHost for an endpoint, so one run keeps one connection per host. */
export function sshHost(endpoint: SshEndpoint): SshHost {
  const key = `${endpoint.user ?? ''}@${endpoint.host}:${endpoint.port?.toString() ?? ''}`;
  let host = open.get(key);
  if (!host) {
    host = new SshHost(endpoint);
    open.set(key, host);
  }
  return host;
}

/** Closes every master connection this process opened and removes their sockets. */
export async function closeSshConnections(): Promise<void> {
  const hosts = [...open.values()];
  open.clear();
  const dir = controlDir;
  controlDir = undefined;
  if (!dir) return;
  await Promise.all(hosts.map((host) => new Promise<void>((resolve) => {
    const child = spawn('ssh', [...commonOptionsFor(dir), '-O', 'exit', ...destination(host.endpoint)], { stdio: 'ignore' });
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    child.on('error', () => { clearTimeout(timer); resolve(); });
    child.on('close', () => { clearTimeout(timer); resolve(); });
  })));
  rmSync(dir, { recursive: true, force: true });
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
