#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { runProgram, type CommandFactory } from './run.js';

// dist/src/cli/main.js -> the package.json of the installation.
const { version } = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };

/**
 * Each command's module is loaded only when that command runs: `serve` brings fastify, pino
 * and prom-client, which a `packager upload` of an unchanged tree would otherwise spend a
 * good part of its time loading. Help and unknown commands load them all.
 */
const COMMANDS: Record<string, () => Promise<CommandFactory>> = {
  packager: async () => (await import('./packager.js')).packagerCommand,
  start: async () => (await import('./start.js')).startCommand,
  client: async () => (await import('./client.js')).clientCommand,
  serve: async () => (await import('./serve.js')).serveCommand,
  autoserv: async () => (await import('./autoserv.js')).autoservCommand,
};

const chosen = Object.hasOwn(COMMANDS, process.argv[2] ?? '') ? COMMANDS[process.argv[2] ?? ''] : undefined;
const commands = await Promise.all(chosen ? [chosen()] : Object.values(COMMANDS).map((load) => load()));
process.exitCode = await runProgram('Autotest package management: packager, repositories, installs, server and autoserv', commands, process.argv, version);
