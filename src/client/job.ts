import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import pLimit from 'p-limit';
import { AutotestError, describeError, isAutotestError } from '../errors.js';
import { checkName, type PackageType } from '../packages/index.js';
import { AllRepositoriesFailed } from '../fetch/index.js';
import { installFolder, installFromTarball, installPackages, type InstallOptions, type InstallRecord } from './install.js';
import type { ChannelClient } from './channel.js';
import { createStatusLog, type Status } from './status-log.js';

export interface JobOptions {
  /** The control file: an ES module whose default export receives the job. */
  control: string;
  resultsDir: string;
  install: Omit<InstallOptions, 'jobs'>;
  /** Sees each status.log line as it is written. */
  onStatus?: (line: string) => void;
  /** Longest a test, a dep setup or a profiler call may take; default 1 h. */
  stepTimeoutMs?: number;
  /** autoserv's channel: asked, last, for a package that no repository has. */
  channel?: ChannelClient;
}

export interface TestResult {
  name: string;
  subdir: string;
  status: Status;
  message: string;
  seconds: number;
}

export type TransferRecord = Pick<InstallRecord, 'type' | 'name' | 'file' | 'action' | 'repository' | 'bytes' | 'seconds'> & {
  /** Got before the first test because the control file declared it (export const packages). */
  ahead: boolean;
};

export interface JobReport {
  status: Status;
  tests: TestResult[];
  transfers: TransferRecord[];
  /** waitSeconds: how long the job stood waiting on packages (the fetch ahead, then each on-demand install). */
  totals: { bytes: number; seconds: number; packages: number; waitSeconds: number };
}

/** How many declared packages are fetched at once before the first test. */
const AHEAD_CONCURRENCY = 4;

/** What a control file may declare it needs: `export const packages = { tests, deps, profilers }`. */
export interface DeclaredPackages {
  test: string[];
  dep: string[];
  profiler: string[];
}

/** Reads a control file's `packages` export; a malformed one is the control file's error. */
export function readDeclaredPackages(value: unknown, control: string): DeclaredPackages {
  const declared: DeclaredPackages = { test: [], dep: [], profiler: [] };
  if (value === undefined) return declared;
  const bad = (why: string): never => {
    throw new AutotestError('ERR_CONTROL_FILE', `${control}: export const packages ${why}`, {
      hint: "declare it as export const packages = { tests: ['name'], deps: [], profilers: [] }",
    });
  };
  if (typeof value !== 'object' || value === null || Array.isArray(value)) bad('is not an object');
  const record = value as Record<string, unknown>;
  for (const key of Object.keys(record)) if (!['tests', 'deps', 'profilers'].includes(key)) bad(`has an unknown key "${key}" (tests, deps, profilers)`);
  for (const [key, type] of [
    ['tests', 'test'],
    ['deps', 'dep'],
    ['profilers', 'profiler'],
  ] as const) {
    const list = record[key];
    if (list === undefined) continue;
    const names: unknown[] = Array.isArray(list) ? list : [list];
    if (!Array.isArray(list) || !names.every((item): item is string => typeof item === 'string')) bad(`${key} is not a list of names`);
    declared[type] = [...new Set(names.map((name) => checkName(String(name), type)))];
  }
  return declared;
}

/** What a test, dep or profiler module may export. */
interface PackageModule {
  run?: (context: Record<string, unknown>) => unknown;
  setup?: (context: Record<string, unknown>) => unknown;
  start?: (context: Record<string, unknown>) => unknown;
  stop?: (context: Record<string, unknown>) => unknown;
}

/** The job a control file drives. */
export interface Job {
  runTest(name: string, args?: Record<string, unknown>): Promise<Status>;
  setupDep(names: string | string[]): Promise<void>;
  profilers: { add(name: string): Promise<void>; remove(name: string): void };
  resultsDir: string;
}

const SEVERITY: Record<Status, number> = { GOOD: 0, TEST_NA: 0, WARN: 1, FAIL: 2, ERROR: 3, ABORT: 4 };

function withTimeout<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => {
      reject(
        new AutotestError('ERR_TIMEOUT', `${what} did not finish within ${(ms / 1000).toString()} s`, {
          hint: 'its output under the results folder shows how far it got',
        }),
      );
    }, ms);
  });
  return Promise.race([work, timeout]).finally(() => {
    clearTimeout(timer);
  });
}

/** Autotest's keyval file: one key=value per line. */
function formatKeyvals(keyvals: Record<string, unknown>): string {
  return Object.entries(keyvals)
    .filter(([key]) => /^[\w.-]+$/.test(key))
    .map(([key, value]) => `${key}=${String(value).replace(/[\r\n]+/g, ' ')}\n`)
    .join('');
}

/** A test says FAIL by throwing an error named TestFail (as Autotest's error.TestFail); anything else thrown is an ERROR. */
function statusOfError(error: unknown): Status {
  return error instanceof Error && error.name === 'TestFail' ? 'FAIL' : 'ERROR';
}

interface RunningProfiler {
  name: string;
  module: PackageModule;
  process: ChildProcess | undefined;
}

/**
 * Runs a control file on this machine: every test, dep and profiler it names is installed on
 * demand (fetched, verified, cached), run, and recorded in status.log, with each test's
 * output and keyvals under RESULTS/SUBDIR and a record of every package moved.
 */
export async function runJob(options: JobOptions): Promise<JobReport> {
  const stepTimeout = options.stepTimeoutMs ?? 3_600_000;
  await mkdir(options.resultsDir, { recursive: true });
  const status = createStatusLog(path.join(options.resultsDir, 'status.log'), options.onStatus);
  const transfers: TransferRecord[] = [];
  const tests: TestResult[] = [];
  const subdirs = new Map<string, number>();
  const activeProfilers = new Map<string, PackageModule>();

  let waitSeconds = 0;
  const fromRepositories = async (type: PackageType, name: string, ahead: boolean): Promise<string> => {
    const [record] = await installPackages(type, [name], options.install);
    if (!record) throw new AutotestError('ERR_NOT_FOUND', `${type} ${name} was not installed`);
    transfers.push({
      type,
      name,
      file: record.file,
      action: record.action,
      repository: record.repository,
      bytes: record.bytes,
      seconds: record.seconds,
      ahead,
    });
    return record.md5;
  };
  const fromAutoserv = async (type: PackageType, name: string, channel: ChannelClient, ahead: boolean): Promise<string> => {
    const cacheDir = options.install.cacheDir ?? path.join(options.install.installDir, 'packages');
    await mkdir(cacheDir, { recursive: true });
    const answer = await channel.fetch(type, name, cacheDir);
    await installFromTarball(type, name, answer.file, answer.md5, options.install);
    transfers.push({
      type,
      name,
      file: path.basename(answer.file),
      action: 'fetched',
      repository: 'autoserv',
      bytes: answer.bytes,
      seconds: answer.seconds,
      ahead,
    });
    return answer.md5;
  };
  const obtain = async (type: PackageType, name: string, ahead: boolean): Promise<string> => {
    try {
      return await fromRepositories(type, name, ahead);
    } catch (error) {
      // No repository has it: autoserv packs it from its own tree, when it serves packages.
      if (!options.channel || !isAutotestError(error, 'ERR_ALL_REPOSITORIES_FAILED')) throw error;
      // A repository that failed (a signature not believed, say) is not passed over in silence;
      // one that lacks the package is what autoserv is there for.
      if (error instanceof AllRepositoriesFailed) {
        for (const failure of error.failures) options.install.onWarning?.(`${type} ${name}: passed over ${failure}; asking autoserv`);
      }
      return fromAutoserv(type, name, options.channel, ahead);
    }
  };
  /** Packages fetched ahead, by "type name": their md5, so the step that needs one does not ask again. */
  const fetchedAhead = new Map<string, string>();
  const fetchAhead = async (declared: DeclaredPackages): Promise<void> => {
    const started = performance.now();
    const limit = pLimit(AHEAD_CONCURRENCY);
    const wanted = (['dep', 'profiler', 'test'] as const).flatMap((type) => declared[type].map((name) => ({ type, name })));
    const failures = await Promise.all(
      wanted.map(({ type, name }) =>
        limit(async () => {
          try {
            fetchedAhead.set(`${type} ${name}`, await obtain(type, name, true));
            return undefined;
          } catch (error) {
            return { type, name, error };
          }
        }),
      ),
    );
    waitSeconds += (performance.now() - started) / 1000;
    const missing = failures.flatMap((failure) => (failure === undefined ? [] : [failure]));
    // Offline, a declared package that is not here is known missing now: say all of them at
    // once rather than one per step. Online, a failed one is tried again when a step needs it.
    if (options.install.offline === true && missing.length > 0) {
      throw new AutotestError(
        'ERR_OFFLINE_MISSING',
        `offline, declared packages are missing:\n${missing.map((m) => `  - ${m.type} ${m.name}: ${describeError(m.error)}`).join('\n')}`,
        {
          hint: 'install them once with a connection (without --offline), then run offline',
        },
      );
    }
  };

  const install = async (type: PackageType, name: string): Promise<PackageModule> => {
    checkName(name, type);
    let md5 = fetchedAhead.get(`${type} ${name}`);
    if (md5 === undefined) {
      const started = performance.now();
      try {
        md5 = await obtain(type, name, false);
      } finally {
        waitSeconds += (performance.now() - started) / 1000;
      }
    }
    const file = path.join(installFolder(options.install.installDir, type, name), `${name}.mjs`);
    // The marker's checksum in the URL: a new version of the package is a new module.
    const loaded = (await import(`${pathToFileURL(file).href}?md5=${md5}`)) as PackageModule;
    return loaded;
  };

  const startProfilers = async (testDir: string): Promise<RunningProfiler[]> => {
    const running: RunningProfiler[] = [];
    for (const [name, module] of activeProfilers) {
      const dir = path.join(testDir, 'profiling');
      await mkdir(dir, { recursive: true });
      const answer = (await withTimeout(Promise.resolve(module.start?.({ resultsDir: dir })), stepTimeout, `profiler ${name} start`)) as
        { command?: unknown } | undefined;
      let child: ChildProcess | undefined;
      const command = answer?.command;
      if (Array.isArray(command) && command.every((part): part is string => typeof part === 'string') && command.length > 0) {
        const [program = '', ...args] = command;
        const out = createWriteStream(path.join(dir, `${name}.log`));
        child = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'] });
        child.stdout?.pipe(out);
        child.stderr?.pipe(out);
        child.on('error', (error) => {
          out.end(`profiler ${name}: ${error.message}\n`);
        });
      }
      running.push({ name, module, process: child });
    }
    return running;
  };

  const stopProfilers = async (running: RunningProfiler[], testDir: string): Promise<void> => {
    for (const profiler of running) {
      profiler.process?.kill('SIGTERM');
      await withTimeout(
        Promise.resolve(profiler.module.stop?.({ resultsDir: path.join(testDir, 'profiling') })),
        stepTimeout,
        `profiler ${profiler.name} stop`,
      ).catch(() => undefined);
    }
  };

  const job: Job = {
    resultsDir: options.resultsDir,
    async runTest(name, args = {}) {
      const count = (subdirs.get(name) ?? 0) + 1;
      subdirs.set(name, count);
      const subdir = count === 1 ? name : `${name}.${count.toString()}`;
      const testDir = path.join(options.resultsDir, subdir);
      await mkdir(testDir, { recursive: true });
      const started = performance.now();
      await status.start(subdir, name);
      let result: Status = 'GOOD';
      let message = 'completed successfully';
      try {
        const module = await install('test', name);
        if (typeof module.run !== 'function')
          throw new AutotestError('ERR_TEST_MODULE', `test ${name}: its module exports no run function`, {
            hint: 'a test module exports an async `run` function (see example/client/tests/); publish the fixed test again',
          });
        const running = await startProfilers(testDir);
        try {
          const answer = (await withTimeout(Promise.resolve(module.run({ ...args, resultsDir: testDir })), stepTimeout, `test ${name}`)) as
            { keyvals?: Record<string, unknown> } | undefined;
          await writeFile(path.join(testDir, 'keyval'), formatKeyvals(answer?.keyvals ?? {}));
        } finally {
          await stopProfilers(running, testDir);
        }
      } catch (error) {
        result = statusOfError(error);
        message = describeError(error);
        await writeFile(path.join(testDir, 'error.txt'), `${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
      }
      await status.end(result, subdir, name, message);
      tests.push({ name, subdir, status: result, message, seconds: (performance.now() - started) / 1000 });
      return result;
    },
    async setupDep(names) {
      for (const name of Array.isArray(names) ? names : [names]) {
        try {
          const module = await install('dep', name);
          if (typeof module.setup !== 'function')
            throw new AutotestError('ERR_TEST_MODULE', `dep ${name}: its module exports no setup function`, {
              hint: 'a dep module exports an async `setup` function (see example/client/deps/); publish the fixed dep again',
            });
          await withTimeout(
            Promise.resolve(module.setup({ installDir: installFolder(options.install.installDir, 'dep', name) })),
            stepTimeout,
            `dep ${name} setup`,
          );
          await status.record('GOOD', '----', `dep.${name}`, 'set up');
        } catch (error) {
          await status.record('ERROR', '----', `dep.${name}`, describeError(error));
          throw new AutotestError('ERR_DEP_SETUP', `dep ${name} could not be set up: ${describeError(error)}`, {
            cause: error,
            hint: `the job's tests that need ${name} were not run; see the dep's own output above`,
          });
        }
      }
    },
    profilers: {
      async add(name) {
        activeProfilers.set(name, await install('profiler', name));
      },
      remove(name) {
        activeProfilers.delete(name);
      },
    },
  };

  const started = performance.now();
  await status.start('----', '----');
  const controlOutcome = await runControlFile(options.control, job, fetchAhead);
  let jobStatus = controlOutcome.status;
  for (const test of tests) if (SEVERITY[test.status] > SEVERITY[jobStatus]) jobStatus = test.status;
  await status.end(jobStatus, '----', '----', controlOutcome.message);
  await status.flush();
  return writeJobReport(options.resultsDir, { status: jobStatus, tests, transfers, started, waitSeconds });
}

/** Imports the control file and runs its default export with `job`; a failure of either aborts the job. */
async function runControlFile(file: string, job: Job, fetchAhead: (declared: DeclaredPackages) => Promise<void>): Promise<{ status: Status; message: string }> {
  try {
    const control = (await import(pathToFileURL(path.resolve(file)).href)) as { default?: unknown; packages?: unknown };
    if (typeof control.default !== 'function')
      throw new AutotestError('ERR_CONTROL_FILE', `${file}: the control file has no default export function`, {
        hint: 'a control file is an ES module: `export default async (job) => { ... }` (see example/jobs/)',
      });
    await fetchAhead(readDeclaredPackages(control.packages, file));
    await (control.default as (job: Job) => unknown)(job);
    return { status: 'GOOD', message: '' };
  } catch (error) {
    return { status: 'ABORT', message: describeError(error) };
  }
}

/** The job's report, written as job.json and (its transfers) transfers.json in the results folder. */
async function writeJobReport(
  resultsDir: string,
  outcome: { status: Status; tests: TestResult[]; transfers: TransferRecord[]; started: number; waitSeconds: number },
): Promise<JobReport> {
  const { tests, transfers, waitSeconds } = outcome;
  const report: JobReport = {
    status: outcome.status,
    tests,
    transfers,
    totals: {
      bytes: transfers.reduce((sum, t) => sum + t.bytes, 0),
      seconds: (performance.now() - outcome.started) / 1000,
      packages: transfers.filter((t) => t.action === 'fetched').length,
      waitSeconds,
    },
  };
  await writeFile(path.join(resultsDir, 'transfers.json'), `${JSON.stringify({ transfers, totals: report.totals, waitSeconds }, null, 2)}\n`);
  await writeFile(path.join(resultsDir, 'job.json'), `${JSON.stringify(report, null, 2)}\n`);
  return report;
}
