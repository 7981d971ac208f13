import lockfile from 'proper-lockfile';
import { AutotestError, describeError } from '../errors.js';

export const LOCK_NAME = '.packages.lock';

/**
 * Runs `work` holding the location's index lock, shared by every process that writes there.
 * proper-lockfile keeps the lock fresh while held and takes over one whose holder died
 * (SIGKILL) once it is `stale` ms old, so a killed packager never blocks the next one.
 */
export async function withIndexLock<T>(dir: string, where: string, work: (assertHeld: () => void) => Promise<T>): Promise<T> {
  let compromised: Error | undefined;
  let release: () => Promise<void>;
  try {
    release = await lockfile.lock(dir, {
      lockfilePath: `${dir}/${LOCK_NAME}`,
      realpath: false,
      stale: 5000,
      update: 1000,
      retries: { retries: 400, factor: 1.2, minTimeout: 10, maxTimeout: 200, randomize: true },
      onCompromised: (error) => {
        compromised = error;
      },
    });
  } catch (error) {
    throw new AutotestError('ERR_LOCK', `${where}: cannot take the index lock ${LOCK_NAME}: ${describeError(error)}`, {
      hint: 'another packager holds it for too long; try again, or remove the lock folder if no packager runs',
      cause: error,
    });
  }
  // Called before every write: once the lock is lost, another writer may hold it.
  const assertHeld = (): void => {
    if (compromised) {
      throw new AutotestError('ERR_LOCK', `${where}: the index lock was lost while writing (${compromised.message})`, {
        hint: 'run "autotest packager verify" on the location, then upload again',
      });
    }
  };
  try {
    const result = await work(assertHeld);
    assertHeld();
    return result;
  } finally {
    await release().catch(() => undefined);
  }
}
