#!/usr/bin/env node
import { Command, CommanderError } from 'commander';
import { EXIT_USAGE, printError, processOutput } from './output.js';
import { packagerCommand } from './packager.js';
import { startCommand } from './start.js';
import { clientCommand } from './client.js';
import { serveCommand } from './serve.js';
import { autoservCommand } from './autoserv.js';
import { closeHttpConnections } from '../fetch/index.js';
import { closeSshConnections } from '../ssh/session.js';

async function main(argv: string[]): Promise<number> {
  let exitCode = 0;
  const setExit = (code: number): void => {
    exitCode = code;
  };
  const program = new Command('autotest')
    .description('Autotest package management: packager, repositories and installs')
    .exitOverride()
    .showHelpAfterError()
    .addCommand(packagerCommand(processOutput, setExit).exitOverride())
    .addCommand(startCommand(processOutput, setExit).exitOverride())
    .addCommand(clientCommand(processOutput, setExit).exitOverride())
    .addCommand(serveCommand(processOutput, setExit).exitOverride())
    .addCommand(autoservCommand(processOutput, setExit).exitOverride());
  try {
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      return error.code === 'commander.helpDisplayed' || error.code === 'commander.version' || error.exitCode === 0 ? 0 : EXIT_USAGE;
    }
    return printError(processOutput, error);
  } finally {
    closeHttpConnections();
    await closeSshConnections();
  }
  return exitCode;
}

process.exitCode = await main(process.argv);
