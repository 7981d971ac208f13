import { spawn, type ChildProcess } from 'node:child_process';
import type { Readable } from 'node:stream';
import { AutotestError } from '../errors.js';
import type { Resources } from '../resources.js';
import { sshHost, whenClosed, type SshHost } from '../ssh/session.js';

/** A machine autoserv drives: this one (no SSH) or one reached over OpenSSH. */
export interface TestHost {
  name: string;
  /** Starts `argv` on the host; the caller owns the child, whose end whenClosed(child) gives. */
  spawn(argv: readonly string[]): Promise<ChildProcess>;
  /** Runs `argv` to the end; rejects with what it printed when it fails and `allowCodes` does not list the code. */
  run(
    argv: readonly string[],
    options?: { input?: string | Buffer | Readable; timeoutMs?: number; allowCodes?: readonly number[] },
  ): Promise<{ code: number; stdout: string; stderr: string }>;
}

const HOST_RE = /^(?:(?<user>[A-Za-z0-9_][A-Za-z0-9._-]*)@)?(?<host>[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\])(?::(?<port>\d{1,5}))?$/;

/** Reads `-m` entries: `localhost`, or `[user@]host[:port]`; anything that could reach a shell is refused. */
export function parseHost(text: string): { user: string | undefined; host: string; port: number | undefined } | 'localhost' {
  if (text === 'localhost') return 'localhost';
  const match = HOST_RE.exec(text);
  const port = match?.groups?.port === undefined ? undefined : Number(match.groups.port);
  if (!match?.groups?.host || (port !== undefined && (port < 1 || port > 65535))) {
    throw new AutotestError('ERR_USAGE', `host "${text}": not localhost or [user@]host[:port]`, { hint: 'list hosts as -m host1,user@host2:2222' });
  }
  return { user: match.groups.user, host: match.groups.host.replace(/^\[|\]$/g, ''), port };
}

function collect(
  child: ChildProcess,
  input: string | Buffer | Readable | undefined,
  timeoutMs: number,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
    });
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      if (stderr.length < 8192) stderr += chunk;
    });
    child.stdin?.on('error', () => undefined);
    if (input === undefined) child.stdin?.end();
    else if (typeof input === 'string' || Buffer.isBuffer(input)) child.stdin?.end(input);
    else if (child.stdin) input.pipe(child.stdin);
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    void whenClosed(child).then(({ code }) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr: stderr.trim() });
    });
  });
}

function checked(
  name: string,
  argv: readonly string[],
  result: { code: number; stdout: string; stderr: string },
  allowCodes: readonly number[] = [],
): { code: number; stdout: string; stderr: string } {
  if (result.code === 0 || allowCodes.includes(result.code)) return result;
  throw new AutotestError(
    'ERR_SSH',
    `${name}: "${argv[0] ?? ''}" failed with exit code ${result.code.toString()}${result.stderr ? `: ${result.stderr}` : ''}`,
    {
      hint: 'check --host-dir is writable on the host and that node, tar and sh are installed there',
    },
  );
}

/** `resources` keep the SSH master connection of a remote host. */
export function createHost(text: string, resources: Resources): TestHost {
  const parsed = parseHost(text);
  if (parsed === 'localhost') {
    return {
      name: 'localhost',
      spawn: (argv) => Promise.resolve(spawn(argv[0] ?? 'true', argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] })),
      async run(argv, options = {}) {
        const child = spawn(argv[0] ?? 'true', argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
        return checked('localhost', argv, await collect(child, options.input, options.timeoutMs ?? 600_000), options.allowCodes);
      },
    };
  }
  const ssh: SshHost = sshHost(parsed, resources);
  return {
    name: text,
    spawn: (argv) => ssh.spawn(argv),
    async run(argv, options = {}) {
      const result = await collect(await ssh.spawn(argv, options.timeoutMs), options.input, options.timeoutMs ?? 600_000);
      if (result.code === 255) throw new AutotestError('ERR_SSH_CONNECT', `ssh ${text}: cannot connect${result.stderr ? `: ${result.stderr}` : ''}`);
      return checked(text, argv, result, options.allowCodes);
    },
  };
}
