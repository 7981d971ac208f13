import path from 'node:path';
import { Command } from 'commander';
import { runAutoserv, parseHost } from '../autoserv/index.js';
import { loadConfig } from '../config/index.js';
import { AutotestError } from '../errors.js';
import { chooseClientDir } from './packager.js';
import { EXIT_FAILED, EXIT_OK, formatBytes, type Output } from './output.js';
import type { Resources } from '../resources.js';

interface AutoservFlags {
  machines: string;
  results?: string;
  config?: string;
  clientDir?: string;
  hostDir?: string;
  clientInstall: string;
  /** --overwrite: replace RESULTS/HOST instead of keeping the previous run beside it. */
  overwrite?: boolean;
}

export function autoservCommand(output: Output, setExit: (code: number) => void, resources: Resources): Command {
  return new Command('autoserv')
    .description('run a control file on test machines: install the client through packaging, run the job, bring the results back')
    .argument('<control>', 'the client control file')
    .requiredOption('-m, --machines <hosts>', 'comma-separated hosts: localhost or [user@]host[:port]')
    .option('-r, --results <dir>', 'results folder (default: results/autoserv)')
    .option('--config <path>', 'global_config.ini to read (default: $AUTOTEST_CONFIG, else the embedded default)')
    .option('--client-dir <path>', 'the client tree copied when packaging fails (default: client_dir, else the example tree)')
    .option('--client-install <way>', 'auto (packaging, else a light copy, else the full tree) or full (the full tree, as without packaging)', 'auto')
    .option('--host-dir <path>', 'folder on each host for the client, its package cache and results (default: /var/tmp/autotest)')
    .option('--overwrite', 'replace the previous results of a host (default: keep them as RESULTS/HOST.N)')
    .action(async (control: string, flags: AutoservFlags) => {
      const hosts = flags.machines
        .split(',')
        .map((h) => h.trim())
        .filter((h) => h !== '');
      if (hosts.length === 0) throw new AutotestError('ERR_USAGE', '-m names no host');
      for (const host of hosts) parseHost(host);
      const hostDir = flags.hostDir ?? '/var/tmp/autotest';
      if (flags.clientInstall !== 'auto' && flags.clientInstall !== 'full')
        throw new AutotestError('ERR_USAGE', `--client-install ${flags.clientInstall}: auto or full`);
      if (!path.posix.isAbsolute(hostDir) || /[\0-\x1f]/.test(hostDir)) throw new AutotestError('ERR_USAGE', `--host-dir ${hostDir}: must be an absolute path`);
      // fetch_client_cert and fetch_client_key name files on the hosts: passed on, not read here.
      const config = await loadConfig({ file: flags.config, readClientCertificate: false });
      for (const warning of config.warnings) output.err(`warning: ${warning}`);
      const summaries = await runAutoserv({
        hosts,
        control: path.resolve(control),
        resultsDir: path.resolve(flags.results ?? path.join('results', 'autoserv')),
        locations: config.packages.fetchLocations,
        clientDir: chooseClientDir(flags, config),
        hostDir,
        clientInstall: flags.clientInstall === 'full' ? 'full copy' : 'auto',
        servePackages: config.packages.servePackagesFromAutoserv,
        tls: config.packages.fetch.tls,
        trust: config.packages.fetch.trust,
        keepPrevious: flags.overwrite !== true,
        onLine: (host, line) => {
          output.out(`[${host}] ${line}`);
        },
        resources,
      });
      for (const s of summaries) {
        output.out(
          `${s.host}: client by ${s.clientInstall}${s.why.length > 0 ? ` (${s.why.join('; ')})` : ''}; job ${s.status}; ` +
            `${s.tests.map((t) => `${t.name} ${t.status}`).join(', ') || 'no tests'}; setup ${formatBytes(s.setup.bytes)} moved${s.error ? `; error: ${s.error}` : ''}`,
        );
        output.out(`  results in ${s.results}${s.previousResults === undefined ? '' : ` (the previous run's moved to ${s.previousResults})`}`);
      }
      setExit(summaries.every((s) => s.status === 'GOOD') ? EXIT_OK : EXIT_FAILED);
    });
}
