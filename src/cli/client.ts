import path from 'node:path';
import { Command } from 'commander';
import { loadConfig, parseLocation } from '../config/index.js';
import { installPackages } from '../client/install.js';
import { runJob } from '../client/job.js';
import { createChannelClient } from '../client/channel.js';
import { checkType, parseNameList } from '../packages/index.js';
import { countOf, EXIT_FAILED, EXIT_OK, formatBytes, type Output } from './output.js';
import { createDownloadProgress } from './progress.js';
import type { Resources } from '../resources.js';
import type { Running } from './run.js';

interface ClientFlags {
  config?: string;
  installDir?: string;
  cacheDir?: string;
  repository?: string[];
  json?: boolean;
  offline?: boolean;
}

const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value];

/** --install-dir, else $AUTOTEST_INSTALL_DIR, else var/client under the working directory. */
export function chooseInstallDir(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  return path.resolve(flag ?? env.AUTOTEST_INSTALL_DIR ?? path.join('var', 'client'));
}

/** Prints each index warning once per command, however many packages met it. */
function warnOnce(output: Output): (message: string) => void {
  const said = new Set<string>();
  return (message) => {
    if (said.has(message)) return;
    said.add(message);
    output.err(`warning: ${message}`);
  };
}

async function runInstall(typeText: string, names: string[], flags: ClientFlags, { output, resources }: Running): Promise<number> {
  const type = checkType(typeText);
  const config = await loadConfig({ file: flags.config });
  for (const warning of config.warnings) output.err(`warning: ${warning}`);
  const extra = (flags.repository ?? []).map((text) => parseLocation(text, process.cwd(), config.packages.s3));
  const progress = createDownloadProgress(output);
  const records = await installPackages(
    type,
    names.flatMap((n) => parseNameList(n, type)),
    {
      locations: [...extra, ...config.packages.fetchLocations],
      settings: config.packages.fetch,
      installDir: chooseInstallDir(flags.installDir),
      ...(flags.cacheDir === undefined ? {} : { cacheDir: path.resolve(flags.cacheDir) }),
      offline: flags.offline === true,
      cacheSizeBytes: config.packages.clientCacheSizeBytes,
      onProgress: progress.onProgress,
      onWarning: warnOnce(output),
      resources,
    },
  ).finally(progress.finish);
  if (flags.json === true) output.out(JSON.stringify(records, null, 2));
  else {
    for (const r of records) {
      for (const reason of r.passedOver) output.err(`warning: ${r.type} ${r.name}: passed over ${reason}`);
      output.out(`${r.type} ${r.name}: ${r.action} (${r.file} from ${r.repository}, ${formatBytes(r.bytes)} moved, ${r.seconds.toFixed(2)} s) -> ${r.folder}`);
    }
  }
  return EXIT_OK;
}

interface RunFlags extends ClientFlags {
  results?: string;
  autoservChannel?: boolean;
}

async function runControl(control: string, flags: RunFlags, { output, resources }: Running): Promise<number> {
  const config = await loadConfig({ file: flags.config });
  for (const warning of config.warnings) output.err(`warning: ${warning}`);
  const extra = (flags.repository ?? []).map((text) => parseLocation(text, process.cwd(), config.packages.s3));
  const resultsDir = path.resolve(flags.results ?? path.join('results', 'default'));
  const report = await runJob({
    control: path.resolve(control),
    resultsDir,
    install: {
      locations: [...extra, ...config.packages.fetchLocations],
      settings: config.packages.fetch,
      installDir: chooseInstallDir(flags.installDir),
      ...(flags.cacheDir === undefined ? {} : { cacheDir: path.resolve(flags.cacheDir) }),
      onWarning: warnOnce(output),
      offline: flags.offline === true,
      cacheSizeBytes: config.packages.clientCacheSizeBytes,
      resources,
    },
    // With --json, standard output holds the one JSON document: status lines go beside it.
    onStatus: (line) => {
      if (flags.json === true) output.err(line);
      else output.out(line);
    },
    ...(flags.autoservChannel === true ? { channel: createChannelClient(process.stdin, process.stdout, config.packages.fetch.timeoutMs) } : {}),
  });
  // The channel's input stays open until autoserv sees the job end: let go of it now.
  if (flags.autoservChannel === true) process.stdin.destroy();
  if (flags.json === true) output.out(JSON.stringify(report, null, 2));
  else
    output.out(
      `job ${report.status}: ${countOf(report.tests.length, 'test')}, ${countOf(report.totals.packages, 'package')} fetched, ${formatBytes(report.totals.bytes)} moved; results in ${resultsDir}`,
    );
  return report.status === 'GOOD' ? EXIT_OK : EXIT_FAILED;
}

export function clientCommand(output: Output, setExit: (code: number) => void, resources: Resources): Command {
  const client = new Command('client').description('the client side: install packages from the repositories, run jobs');
  client
    .command('run')
    .description('run a control file: the tests, deps and profilers it names are installed on demand')
    .argument('<control>', 'the control file (an ES module whose default export receives the job)')
    .option('--config <path>', 'global_config.ini to read (default: $AUTOTEST_CONFIG, else the embedded default)')
    .option('--results <dir>', 'results folder (default: results/default)')
    .option('--install-dir <path>', 'the client install folder (default: $AUTOTEST_INSTALL_DIR, else var/client)')
    .option('--cache-dir <path>', 'the package cache (default: INSTALL_DIR/packages)')
    .option('-r, --repository <location>', 'a repository tried before fetch_location; repeatable', collect)
    .option('--json', 'print the job report as JSON at the end')
    .option('--autoserv-channel', 'run under autoserv: ask it, over standard input and output, for packages no repository has')
    .option('--offline', 'use only what is installed or in the package cache; open no connection; fail naming every missing package')
    .exitOverride()
    .action(async (control: string, flags: RunFlags) => {
      setExit(await runControl(control, flags, { output, resources }));
    });
  client
    .command('install')
    .description('install packages (fetched from fetch_location in order, verified, cached)')
    .argument('<type>', 'test, dep, profiler or client')
    .argument('<names...>', 'package names (comma-separated or separate)')
    .option('--config <path>', 'global_config.ini to read (default: $AUTOTEST_CONFIG, else the embedded default)')
    .option('--install-dir <path>', 'the client install folder (default: $AUTOTEST_INSTALL_DIR, else var/client)')
    .option('--cache-dir <path>', 'the package cache (default: INSTALL_DIR/packages)')
    .option('-r, --repository <location>', 'a repository tried before fetch_location; repeatable', collect)
    .option('--offline', 'use only what is installed or in the package cache; open no connection; fail naming every missing package')
    .option('--json', 'print the result as JSON')
    .exitOverride()
    .action(async (type: string, names: string[], flags: ClientFlags) => {
      setExit(await runInstall(type, names, flags, { output, resources }));
    });
  return client;
}
