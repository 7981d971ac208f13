#!/usr/bin/env node
/**
 * The client runtime's own entry point: only `autotest client` (install and run), bundled into
 * one file with its dependencies (npm run build:client) so that it travels inside the client
 * package to test machines that have Node.js and nothing else.
 */
import { Command, CommanderError } from 'commander';
import { closeHttpConnections } from '../fetch/index.js';
import { closeSshConnections } from '../ssh/session.js';
import { clientCommand } from './client.js';
import { EXIT_USAGE, printError, processOutput } from './output.js';

async function main(argv: string[]): Promise<number> {
  let exitCode = 0;
  const program = new Command('autotest').exitOverride().showHelpAfterError()
    .addCommand(clientCommand(processOutput, (code) => { exitCode = code; }).exitOverride());
  try {
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode === 0 ? 0 : EXIT_USAGE;
    return printError(processOutput, error);
  } finally {
    closeHttpConnections();
    await closeSshConnections();
  }
  return exitCode;
}

process.exitCode = await main(process.argv);
