import { lstatSync, mkdirSync, mkdtempSync, type Stats } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import path from 'node:path';
import { AutotestError } from '../errors.js';

/** Seconds a master connection outlives the run that opened it, unless AUTOTEST_SSH_CONTROL_PERSIST says. */
export const DEFAULT_CONTROL_PERSIST = 300;

/**
 * The longest socket folder ssh can use: a master binds `FOLDER/%C.XXXXXXXXXXXXXXXX` (%C is 40
 * hex digits, then a 17-byte temporary suffix) before renaming it, and a socket path is at most
 * 103 bytes on macOS and the BSDs (104 with its NUL), 107 on Linux.
 */
export const CONTROL_DIR_MAX_LENGTH = 103 - (1 + 40 + 17);

/** Where master connections live, and whether they outlive the run. */
export interface ControlSetup {
  dir: string;
  /** ssh's ControlPersist: seconds an idle master stays after its last session. */
  persistSeconds: number;
  /** The folder is this run's own: its masters are closed and it is removed at the end. */
  perRun: boolean;
}

/** AUTOTEST_SSH_CONTROL_PERSIST in seconds; 0 closes the masters at the end of the run. */
export function controlPersistSeconds(env: NodeJS.ProcessEnv): number {
  const text = env.AUTOTEST_SSH_CONTROL_PERSIST;
  if (text === undefined || text === '') return DEFAULT_CONTROL_PERSIST;
  if (!/^\d{1,7}$/.test(text)) {
    throw new AutotestError('ERR_CONFIG', `AUTOTEST_SSH_CONTROL_PERSIST must be a number of seconds, not ${JSON.stringify(text)}`, {
      hint: 'set it to 0 to close SSH master connections at the end of each run, or unset it for the default of 300',
    });
  }
  return Number(text);
}

/** The per-user socket folder: the session's runtime folder (tmpfs, private) or the user's cache. */
export function sharedControlDir(env: NodeJS.ProcessEnv, home: string): string {
  if (env.XDG_RUNTIME_DIR) return path.join(path.resolve(env.XDG_RUNTIME_DIR), 'autotest-ssh');
  return path.join(env.XDG_CACHE_HOME ? path.resolve(env.XDG_CACHE_HOME) : path.join(home, '.cache'), 'autotest', 'ssh');
}

/**
 * Why `stats` of `dir` make it unfit to hold master sockets, or undefined when it is fit: whoever
 * can open a socket there runs commands on the hosts as us, so it must be our own folder that no
 * one else can enter.
 */
export function controlDirProblem(dir: string, stats: Pick<Stats, 'isDirectory' | 'uid' | 'mode'>, uid: number): string | undefined {
  if (!stats.isDirectory()) return `${dir} is not a folder (a symbolic link is refused too)`;
  if (stats.uid !== uid) return `${dir} belongs to uid ${stats.uid.toString()}, not to us (uid ${uid.toString()})`;
  if ((stats.mode & 0o077) !== 0) return `${dir} has mode ${(stats.mode & 0o777).toString(8).padStart(4, '0')}: others can reach its sockets`;
  return undefined;
}

/**
 * The folder for this process's master sockets. Masters persist in the per-user folder; with
 * AUTOTEST_SSH_CONTROL_PERSIST=0, or when that folder's path is too long for a socket, each
 * run gets a temporary folder of its own instead, as masters that do not persist need no sharing.
 */
export function openControlDir(env: NodeJS.ProcessEnv): ControlSetup {
  const persistSeconds = controlPersistSeconds(env);
  const dir = sharedControlDir(env, homedir());
  if (persistSeconds === 0 || dir.length > CONTROL_DIR_MAX_LENGTH) {
    return { dir: mkdtempSync(path.join(tmpdir(), 'autotest-ssh-')), persistSeconds: 60, perRun: true };
  }
  // Created 0700 (parents too); an existing folder keeps its mode and is checked instead.
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const problem = controlDirProblem(dir, lstatSync(dir), process.getuid?.() ?? -1);
  if (problem !== undefined) {
    throw new AutotestError('ERR_SSH', `refusing to keep SSH master connections in ${dir}: ${problem}`, {
      hint: `remove it or make it yours with mode 0700 (chmod 700 ${dir}), or set AUTOTEST_SSH_CONTROL_PERSIST=0 to use a temporary folder per run`,
    });
  }
  return { dir, persistSeconds, perRun: false };
}
