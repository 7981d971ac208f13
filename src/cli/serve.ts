import { Command } from 'commander';
import type { FastifyInstance } from 'fastify';
import { describeLocation, loadConfig, type Config } from '../config/index.js';
import { AutotestError, errnoCode, redactSecrets } from '../errors.js';
import { buildServer } from '../server/index.js';
import { EXIT_OK, type Output } from './output.js';
import type { Resources } from '../resources.js';
import type { Running } from './run.js';

const SHUTDOWN_GRACE_MS = 60_000;

export interface ServeFlags {
  config?: string;
  listen?: string;
  port?: string;
}

/** [SERVER] with --listen and --port laid over it. */
export function applyServeFlags(config: Config, flags: ServeFlags): Config {
  const port = flags.port === undefined ? config.server.port : Number(flags.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new AutotestError('ERR_USAGE', `--port ${flags.port ?? ''}: expected a port number 0-65535`);
  return { ...config, server: { ...config.server, port, listenAddress: flags.listen ?? config.server.listenAddress } };
}

/**
 * Listens until SIGINT or SIGTERM, then closes: no new connection is taken, idle ones close,
 * downloads under way finish. The signal handlers are in place before the address is printed:
 * whoever waits for that line to stop the server must find them there.
 */
export async function serveUntilStopped(config: Config, { output, resources }: Running): Promise<number> {
  const app: FastifyInstance = await buildServer({ config, logLevel: config.server.logLevel, resources });
  let requestStop = (): void => undefined;
  const stopRequested = new Promise<void>((resolve) => {
    requestStop = resolve;
  });
  const onSignal = (): void => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    requestStop();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let address: string;
  try {
    address = await app.listen({ host: config.server.listenAddress, port: config.server.port });
  } catch (error) {
    onSignal();
    await app.close();
    throw listenError(error, config);
  }
  for (const [name, location] of [
    ['builtin', config.server.builtin],
    ['custom', config.server.custom],
  ] as const) {
    const what = !location
      ? `(no ${name} repository)`
      : location.kind === 'cached'
        ? `${redactSecrets(location.text)} through the cache in ${config.server.cache.dir}`
        : describeLocation(location);
    output.out(`serving ${what} at ${address}/packages/${name}/`);
  }
  output.out(`open ${address}/ in a browser (uploads ${config.server.uploadToken ? 'enabled' : 'disabled: no upload_token'})`);
  await stopRequested;
  output.out('shutting down: letting running downloads finish');
  // A download that has not finished in a minute is cut, so a stuck client cannot hold the server.
  const deadline = setTimeout(() => {
    app.server.closeAllConnections();
  }, SHUTDOWN_GRACE_MS);
  await app.close();
  clearTimeout(deadline);
  return EXIT_OK;
}

function listenError(error: unknown, config: Config): unknown {
  const where = `${config.server.listenAddress}:${config.server.port.toString()}`;
  switch (errnoCode(error)) {
    case 'EADDRINUSE':
      return new AutotestError('ERR_LISTEN', `cannot listen on ${where}: the port is in use`, {
        hint: 'another server (perhaps an autotest serve or npm start still running) holds it: stop that one, or choose another port with --port or port in [SERVER]',
        cause: error,
      });
    case 'EACCES':
      return new AutotestError('ERR_LISTEN', `cannot listen on ${where}: permission denied`, {
        hint: 'ports below 1024 need privileges: choose a port >= 1024 with --port or port in [SERVER]',
        cause: error,
      });
    case 'EADDRNOTAVAIL':
      return new AutotestError('ERR_LISTEN', `cannot listen on ${where}: no such address on this machine`, {
        hint: 'set listen_address in [SERVER] (or --listen) to an address of this machine, or 0.0.0.0 for all',
        cause: error,
      });
    default:
      return error;
  }
}

export function serveCommand(output: Output, setExit: (code: number) => void, resources: Resources): Command {
  return new Command('serve')
    .description('serve the repositories, custom uploads and the web frontend over HTTP')
    .option('--config <path>', 'global_config.ini to read (default: $AUTOTEST_CONFIG, else the embedded default)')
    .option('--listen <address>', 'address to listen on (default: listen_address in [SERVER], else 127.0.0.1)')
    .option('--port <port>', 'port to listen on (default: port in [SERVER], else 8080; 0 picks a free one)')
    .action(async (flags: ServeFlags) => {
      const config = applyServeFlags(await loadConfig({ file: flags.config }), flags);
      for (const warning of config.warnings) output.err(`warning: ${warning}`);
      setExit(await serveUntilStopped(config, { output, resources }));
    });
}
