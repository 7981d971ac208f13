import { Command } from 'commander';
import { loadConfig } from '../config/index.js';
import { AutotestError } from '../errors.js';
import { listLocations, uploadPackages } from '../packager/index.js';
import { loadIndexSigning } from '../signing/index.js';
import { chooseClientDir } from './packager.js';
import { EXIT_FAILED, EXIT_OK, formatBytes, type Output } from './output.js';
import { createProgress } from './progress.js';
import { applyServeFlags, serveUntilStopped, type ServeFlags } from './serve.js';
import type { Resources } from '../resources.js';
import type { Running } from './run.js';

/** The main job (`npm start`): publish the client tree to the configured repositories, say what is there, then serve it. */
export async function runStart(flags: StartFlags, running: Running): Promise<number> {
  const { output, resources } = running;
  const config = applyServeFlags(await loadConfig({ file: flags.config }), flags);
  for (const warning of config.warnings) output.err(`warning: ${warning}`);
  if (config.packages.uploadLocations.length === 0) {
    throw new AutotestError('ERR_USAGE', `${config.source} sets no upload_location in [PACKAGES]`, {
      hint: 'add one, or run without --config for the embedded default',
    });
  }
  const clientDir = chooseClientDir(flags, config);
  output.out(`config: ${config.source}`);
  output.out(`client tree: ${clientDir}`);
  const progress = createProgress(output, true);
  const report = await uploadPackages({
    clientDir,
    selection: { all: true, tests: [], profilers: [], deps: [], client: false, files: [] },
    locations: config.packages.uploadLocations,
    compression: config.packages.compression,
    minimumFreeBytes: config.packages.minimumFreeSpaceBytes,
    onEvent: progress.onEvent,
    // signing_key signs every index written, as with `packager upload`.
    signing: await loadIndexSigning(config.packages),
    tls: config.packages.fetch.tls,
    resources,
  });
  progress.finish();
  for (const location of report.locations) {
    if (location.error) {
      progress.failure(`failed: ${location.location}: ${location.error.message}`, location.error.hint);
      continue;
    }
    output.out(`repository ${location.location}: ${location.published.length} published, ${location.unchanged.length} unchanged`);
  }
  for (const failed of report.failedPackages) progress.failure(`failed: ${failed.file}: ${failed.message}`, failed.hint);
  for (const listed of await listLocations(config.packages.uploadLocations, resources, config.packages.fetch.tls)) {
    for (const p of listed.packages) output.out(`  ${p.file.padEnd(40)} ${(p.size === undefined ? '?' : formatBytes(p.size)).padStart(10)}  ${p.md5}`);
  }
  if (!report.ok) return EXIT_FAILED;
  return flags.serve === false ? EXIT_OK : serveUntilStopped(config, running);
}

interface StartFlags extends ServeFlags {
  clientDir?: string;
  /** --no-serve: publish and stop. */
  serve?: boolean;
}

export function startCommand(output: Output, setExit: (code: number) => void, resources: Resources): Command {
  return new Command('start')
    .description('the main job: publish the client tree to the configured repositories, then serve them and the frontend')
    .option('--config <path>', 'global_config.ini to read')
    .option('--client-dir <path>', 'client tree to pack')
    .option('--listen <address>', 'address to serve on (default: listen_address in [SERVER])')
    .option('--port <port>', 'port to serve on (default: port in [SERVER], else 8080)')
    .option('--no-serve', 'publish, list and stop')
    .action(async (flags: StartFlags) => {
      setExit(await runStart(flags, { output, resources }));
    });
}
