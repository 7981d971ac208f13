import path from 'node:path';
import { Command, Option } from 'commander';
import { describeLocation, loadConfig, parseLocation, type Config, type Location } from '../config/index.js';
import { AutotestError } from '../errors.js';
import { fingerprint, loadIndexSigning } from '../signing/index.js';
import { parseNameList } from '../packages/index.js';
import {
  BUNDLED_CLIENT_DIR,
  listLocations,
  removePackages,
  selectedFileNames,
  signLocations,
  uploadPackages,
  upkeepLocations,
  verifyLocations,
  type OperationReport,
  type Selection,
} from '../packager/index.js';
import { countOf, EXIT_FAILED, EXIT_OK, formatBytes, type Output } from './output.js';
import { createProgress, type Progress } from './progress.js';
import type { Resources } from '../resources.js';
import type { Running } from './run.js';

export interface PackagerFlags {
  config?: string;
  clientDir?: string;
  all?: boolean;
  test?: string[];
  profiler?: string[];
  dependency?: string[];
  client?: boolean;
  file?: string[];
  repository?: string[];
  json?: boolean;
  repair?: boolean;
  jobs?: string;
}

const ACTIONS = ['upload', 'remove', 'list', 'verify', 'upkeep', 'sign'] as const;
type Action = (typeof ACTIONS)[number];

const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value];

function selectionFrom(flags: PackagerFlags): Selection {
  const names = (values: string[] | undefined, what: string): string[] => (values ?? []).flatMap((v) => parseNameList(v, what));
  return {
    all: flags.all === true,
    tests: names(flags.test, 'test'),
    profilers: names(flags.profiler, 'profiler'),
    deps: names(flags.dependency, 'dependency'),
    client: flags.client === true,
    files: flags.file ?? [],
  };
}

/** --client-dir, else client_dir in [PACKAGES], else the bundled example tree. */
export function chooseClientDir(flags: { clientDir?: string | undefined }, config: Config): string {
  if (flags.clientDir !== undefined) return path.resolve(flags.clientDir);
  return config.packages.clientDir ?? BUNDLED_CLIENT_DIR;
}

function uploadLocations(flags: PackagerFlags, config: Config): Location[] {
  const extra = (flags.repository ?? []).map((text) => parseLocation(text, process.cwd(), config.packages.s3));
  const locations = [...config.packages.uploadLocations, ...extra];
  if (locations.length === 0) {
    throw new AutotestError('ERR_USAGE', `no upload location: ${config.source} sets no upload_location in [PACKAGES] and no -r was given`, {
      hint: 'add upload_location to [PACKAGES] or pass -r PATH',
    });
  }
  return locations;
}

function printOperation(output: Output, report: OperationReport, verb: string, progress: Progress): void {
  for (const location of report.locations) {
    if (location.error) {
      progress.failure(`failed: ${location.location}: ${location.error.message}`, location.error.hint);
      continue;
    }
    const parts =
      verb === 'upload'
        ? [`published ${location.published.length}`, `unchanged ${location.unchanged.length}`]
        : [`removed ${location.removed.length}`, `not there ${location.missing.length}`];
    output.out(`${location.location}${location.created ? ' (created)' : ''}: ${parts.join(', ')}`);
  }
  for (const failed of report.failedPackages) progress.failure(`failed: ${failed.file}: ${failed.message}`, failed.hint);
}

/** Which key of the config (or -r) put a location in the list. */
type LocationRole = 'upload_location' | 'custom_upload_location' | '-r';

/**
 * What list and verify look at: every location the packager writes, builtin and custom, and
 * -r; each once, with the key it came from.
 */
function everyLocation(flags: PackagerFlags, config: Config): { role: LocationRole; location: Location }[] {
  const extra = (flags.repository ?? []).map((text) => parseLocation(text, process.cwd(), config.packages.s3));
  const all = [
    ...config.packages.uploadLocations.map((location) => ({ role: 'upload_location' as const, location })),
    ...config.packages.customUploadLocations.map((location) => ({ role: 'custom_upload_location' as const, location })),
    ...extra.map((location) => ({ role: '-r' as const, location })),
  ];
  const seen = new Set<string>();
  const unique = all.filter(({ location }) => {
    const key = describeLocation(location);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
  if (unique.length === 0) {
    throw new AutotestError('ERR_USAGE', `no location: ${config.source} sets no upload_location nor custom_upload_location in [PACKAGES] and no -r was given`, {
      hint: 'add upload_location to [PACKAGES] or pass -r LOCATION',
    });
  }
  return unique;
}

/** upkeep works on custom_upload_location (and -r), never on the builtin repositories. */
async function upkeep(flags: PackagerFlags, config: Config, { output, resources }: Running): Promise<number> {
  const extra = (flags.repository ?? []).map((text) => parseLocation(text, process.cwd(), config.packages.s3));
  const locations = [...config.packages.customUploadLocations, ...extra];
  if (locations.length === 0) {
    throw new AutotestError('ERR_USAGE', `nothing to keep up: ${config.source} sets no custom_upload_location in [PACKAGES] and no -r was given`, {
      hint: 'add custom_upload_location to [PACKAGES] or pass -r LOCATION',
    });
  }
  const reports = await upkeepLocations(locations, config.packages.customMaxAgeDays, {
    signing: await loadIndexSigning(config.packages),
    tls: config.packages.fetch.tls,
    resources,
  });
  if (flags.json === true) output.out(JSON.stringify(reports, null, 2));
  else {
    for (const report of reports) {
      if (report.error) {
        output.err(`failed: ${report.location}: ${report.error.message}`);
        if (report.error.hint) output.err(`  hint: ${report.error.hint}`);
        continue;
      }
      output.out(`${report.location}: removed ${countOf(report.removed.length, 'file')} older than ${config.packages.customMaxAgeDays.toString()} days`);
      for (const file of report.removed) output.out(`  ${file}`);
    }
  }
  return reports.every((r) => !r.error) ? EXIT_OK : EXIT_FAILED;
}

export async function runPackager(action: string, flags: PackagerFlags, running: Running): Promise<number> {
  const { output, resources } = running;
  if (!(ACTIONS as readonly string[]).includes(action)) {
    throw new AutotestError('ERR_USAGE', `unknown packager action "${action}"`, { hint: `use one of: ${ACTIONS.join(', ')}` });
  }
  const config = await loadConfig({ file: flags.config });
  for (const warning of config.warnings) output.err(`warning: ${warning}`);
  const { compression, minimumFreeSpaceBytes } = config.packages;
  const json = flags.json === true;
  if (action === 'upkeep') return upkeep(flags, config, running);
  if (action === 'list') return list(flags, config, running);
  if (action === 'verify') return verify(flags, config, running);
  if (action === 'sign') return sign(flags, config, running);
  const locations = uploadLocations(flags, config);
  const signing = await loadIndexSigning(config.packages);

  switch (action as Exclude<Action, 'upkeep' | 'list' | 'verify' | 'sign'>) {
    case 'upload': {
      const jobs = flags.jobs === undefined ? undefined : Number(flags.jobs);
      if (jobs !== undefined && (!Number.isInteger(jobs) || jobs < 1)) {
        throw new AutotestError('ERR_USAGE', `--jobs ${flags.jobs ?? ''}: expected a whole number >= 1`);
      }
      const progress = createProgress(output, !json);
      const report = await uploadPackages({
        clientDir: chooseClientDir(flags, config),
        selection: selectionFrom(flags),
        locations,
        compression,
        minimumFreeBytes: minimumFreeSpaceBytes,
        onEvent: progress.onEvent,
        signing,
        tls: config.packages.fetch.tls,
        resources,
        ...(jobs === undefined ? {} : { jobs }),
      });
      progress.finish();
      if (json) output.out(JSON.stringify(report, null, 2));
      else printOperation(output, report, 'upload', progress);
      return report.ok ? EXIT_OK : EXIT_FAILED;
    }
    case 'remove': {
      const files = selectedFileNames(selectionFrom(flags), compression);
      if (flags.all === true) throw new AutotestError('ERR_USAGE', 'remove --all is not supported: name the packages to remove');
      if (files.length === 0) throw new AutotestError('ERR_USAGE', 'nothing to remove: name packages with -t, -d, -p, -c or -f');
      const progress = createProgress(output, !json);
      const report = await removePackages({ files, locations, onEvent: progress.onEvent, signing, tls: config.packages.fetch.tls, resources });
      progress.finish();
      if (json) output.out(JSON.stringify(report, null, 2));
      else printOperation(output, report, 'remove', progress);
      // A name found nowhere is most likely misspelt: that is no success, even if nothing failed.
      const nowhere = files.filter((file) => report.locations.every((l) => !l.error && !l.removed.includes(file)));
      for (const file of nowhere) output.err(`failed: ${file}: in none of the ${countOf(report.locations.length, 'location')} (nothing removed)`);
      if (nowhere.length > 0)
        output.err('  hint: check the name with "autotest packager list"; a custom package is removed with -r CUSTOM_LOCATION or from the frontend');
      return report.ok && nowhere.length === 0 ? EXIT_OK : EXIT_FAILED;
    }
  }
}

/** listLocations and verifyLocations give one report per location. */
function unreachable(): never {
  throw new Error('no report for a location');
}

/** Prints each location's report: a failure on stderr naming the location and its key, else `print`. */
function printReports<R extends { location: string; role: string; error?: { message: string } | undefined }>(
  reports: readonly R[],
  output: Output,
  print: (report: R) => void,
): void {
  for (const report of reports) {
    if (report.error) output.err(`failed: ${report.location} (${report.role}): ${report.error.message}`);
    else print(report);
  }
}

/** `packager list`: every location, builtin and custom, each labelled with the key it came from. */
async function list(flags: PackagerFlags, config: Config, { output, resources }: Running): Promise<number> {
  const locations = everyLocation(flags, config);
  const reports = await Promise.all(
    locations.map(async ({ role, location }) => ({ role, ...((await listLocations([location], resources, config.packages.fetch.tls))[0] ?? unreachable()) })),
  );
  if (flags.json === true) output.out(JSON.stringify(reports, null, 2));
  else {
    printReports(reports, output, (report) => {
      output.out(`${report.location} (${report.role}): ${countOf(report.packages.length, 'package')}`);
      for (const p of report.packages) {
        output.out(
          `  ${p.type.padEnd(8)} ${p.name.padEnd(32)} ${(p.size === undefined ? '?' : formatBytes(p.size)).padStart(10)}  ${p.md5}  ${p.publishedAt ?? ''}`,
        );
      }
    });
  }
  return reports.every((r) => !r.error) ? EXIT_OK : EXIT_FAILED;
}

/**
 * `packager verify`: every location, builtin and custom. --repair publishes again from the
 * client tree only into upload_location and -r: a custom repository's packages never came from it.
 */
async function verify(flags: PackagerFlags, config: Config, { output, resources }: Running): Promise<number> {
  const locations = everyLocation(flags, config);
  const { compression, minimumFreeSpaceBytes } = config.packages;
  const clientDir = chooseClientDir(flags, config);
  const signing = await loadIndexSigning(config.packages);
  // Signatures are checked as clients would (trusted_keys), else against the packager's own key.
  const verifyKeys = config.packages.fetch.trust?.keys ?? (signing ? [signing.key.publicBlob] : undefined);
  const reports = await Promise.all(
    locations.map(async ({ role, location }) => {
      const [report] = await verifyLocations({
        locations: [location],
        repair: flags.repair === true,
        clientDir: role === 'custom_upload_location' ? undefined : clientDir,
        compression,
        minimumFreeBytes: minimumFreeSpaceBytes,
        signing,
        tls: config.packages.fetch.tls,
        verifyKeys,
        resources,
      });
      return { role, ...(report ?? unreachable()) };
    }),
  );
  if (flags.json === true) output.out(JSON.stringify(reports, null, 2));
  else {
    printReports(reports, output, (report) => {
      const state = report.problems.length === 0 ? 'consistent' : countOf(report.problems.length, 'problem');
      output.out(
        `${report.location} (${report.role}): ${report.entries.toString()} indexed, ${state}${report.repaired.length > 0 ? `, repaired ${report.repaired.length.toString()}` : ''}`,
      );
      for (const p of report.problems) output.out(`  ${p.kind}: ${p.file}: ${p.detail}`);
    });
    if (reports.some((r) => r.problems.length > 0) && flags.repair !== true) output.err('hint: run "autotest packager verify --repair" to fix drift');
  }
  return reports.every((r) => !r.error && r.problems.length === 0) ? EXIT_OK : EXIT_FAILED;
}

/**
 * `packager sign`: writes every location's index again with a new serial, signed with
 * signing_key: after a key rotation, or to renew index_valid_days. With -r, only those locations.
 */
async function sign(flags: PackagerFlags, config: Config, { output, resources }: Running): Promise<number> {
  const signing = await loadIndexSigning(config.packages);
  if (!signing) {
    throw new AutotestError('ERR_USAGE', `nothing to sign with: ${config.source} sets no signing_key in [PACKAGES]`, {
      hint: 'make a key with ssh-keygen -t ed25519 -N "" -f FILE and name it in signing_key',
    });
  }
  const locations =
    flags.repository && flags.repository.length > 0
      ? flags.repository.map((text) => parseLocation(text, process.cwd(), config.packages.s3))
      : everyLocation(flags, config).map(({ location }) => location);
  const reports = await signLocations(locations, signing, { resources, tls: config.packages.fetch.tls });
  if (flags.json === true) output.out(JSON.stringify({ key: fingerprint(signing.key.publicBlob), locations: reports }, null, 2));
  else {
    for (const report of reports) {
      if (report.error) {
        output.err(`failed: ${report.location}: ${report.error.message}`);
        if (report.error.hint) output.err(`  hint: ${report.error.hint}`);
      } else output.out(`${report.location}: signed serial ${String(report.serial)} with ${fingerprint(signing.key.publicBlob)}`);
    }
  }
  return reports.every((r) => !r.error) ? EXIT_OK : EXIT_FAILED;
}

export function packagerCommand(output: Output, setExit: (code: number) => void, resources: Resources): Command {
  return new Command('packager')
    .description('pack the client tree and publish it to the upload locations')
    .argument('<action>', `one of ${ACTIONS.join(', ')} (upkeep: delete custom packages older than custom_max_age)`)
    .option('--config <path>', 'global_config.ini to read (default: $AUTOTEST_CONFIG, else the embedded default)')
    .option('--client-dir <path>', 'client tree to pack (default: client_dir in [PACKAGES], else the bundled example)')
    .option('-a, --all', 'every test, site test, dep, profiler and the client')
    .option('-t, --test <names>', 'comma-separated tests', collect)
    .option('-p, --profiler <names>', 'comma-separated profilers', collect)
    .option('-d, --dependency <names>', 'comma-separated deps', collect)
    .option('-c, --client', 'the client package')
    .option('-f, --file <path>', 'a plain file (kernel, image); repeatable', collect)
    .option('-r, --repository <location>', 'an extra upload location; repeatable', collect)
    .option('--repair', 'with verify: fix what is found')
    .option('--json', 'print the result as JSON')
    .addOption(new Option('-j, --jobs <n>', 'compressors run at once (default: the number of cores)'))
    .action(async (action: string, flags: PackagerFlags) => {
      setExit(await runPackager(action, flags, { output, resources }));
    });
}
