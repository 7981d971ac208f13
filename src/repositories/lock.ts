import { spawn, type ChildProcess } from 'node:child_process';
import { AutotestError, describeError } from '../errors.js';
import { whenClosed } from '../ssh/session.js';

export const LOCK_NAME = '.packages.lock';

/** How long a writer waits for another one to finish with the index. */
const LOCK_WAIT_SECONDS = 300;
const CONFLICT_EXIT = 75;

/**
 * The command that takes the lock: flock(1) holds `lockPath` while `cat` waits for its
 * standard input to close. Closing it releases the lock; so does the death of the holder or
 * of the connection to it (the kernel drops a flock with its last open descriptor), so a
 * killed packager never leaves a stale lock behind, locally or on an SSH host.
 */
export function flockCommand(lockPath: string, waitSeconds = LOCK_WAIT_SECONDS): string[] {
  return ['flock', '-w', waitSeconds.toString(), '-E', CONFLICT_EXIT.toString(), lockPath, 'sh', '-c', 'echo locked; exec cat >/dev/null'];
}

/** Spawns the lock holder on this machine. */
export function spawnLocalFlock(lockPath: string, waitSeconds = LOCK_WAIT_SECONDS): ChildProcess {
  const [command = 'flock', ...args] = flockCommand(lockPath, waitSeconds);
  return spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
}

function waitLocked(holder: ChildProcess, where: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    const fail = (why: string): void => {
      reject(
        new AutotestError('ERR_LOCK', `${where}: cannot take the index lock ${LOCK_NAME}: ${why}`, {
          hint: 'another packager holds it for too long, or the location cannot be reached; try again',
        }),
      );
    };
    holder.stdout?.setEncoding('utf8');
    holder.stdout?.on('data', (chunk: string) => {
      stdout += chunk;
      if (stdout.includes('locked\n')) resolve();
    });
    holder.stderr?.setEncoding('utf8');
    holder.stderr?.on('data', (chunk: string) => {
      if (stderr.length < 4096) stderr += chunk;
    });
    holder.on('error', (error) => {
      fail(describeError(error));
    });
    void whenClosed(holder).then(({ code }) => {
      if (code === CONFLICT_EXIT) fail('still held by another writer when the wait ran out');
      else fail(`the lock holder exited (code ${String(code)})${stderr ? `: ${stderr.trim()}` : ''}`);
    });
  });
}

/**
 * Runs `work` holding a location's index lock, taken by `holder` (a flockCommand run locally
 * or over SSH). `assertHeld`, called before every index write, throws once the holder is gone.
 */
export async function withHeldLock<T>(holder: ChildProcess, where: string, work: (assertHeld: () => void) => Promise<T>): Promise<T> {
  holder.stdin?.on('error', () => undefined);
  const closed = whenClosed(holder);
  try {
    await waitLocked(holder, where);
  } catch (error) {
    holder.kill('SIGKILL');
    throw error;
  }
  const assertHeld = (): void => {
    if (holder.exitCode !== null || holder.signalCode !== null) {
      throw new AutotestError('ERR_LOCK', `${where}: the index lock was lost while writing`, {
        hint: 'run "autotest packager verify" on the location, then upload again',
      });
    }
  };
  try {
    const result = await work(assertHeld);
    assertHeld();
    return result;
  } finally {
    holder.stdin?.end();
    const timer = setTimeout(() => holder.kill('SIGKILL'), 10_000);
    await closed;
    clearTimeout(timer);
  }
}

/** The index lock of a local folder. */
export function withIndexLock<T>(dir: string, where: string, work: (assertHeld: () => void) => Promise<T>): Promise<T> {
  return withHeldLock(spawnLocalFlock(`${dir}/${LOCK_NAME}`), where, work);
}
