import { Command, CommanderError } from 'commander';
import { closeConnections } from '../connections.js';
import { EXIT_USAGE, printError, processOutput, type Output } from './output.js';

export type CommandFactory = (output: Output, setExit: (code: number) => void) => Command;

/**
 * Runs a command line made of `commands`: usage errors exit 2, failures print what, where
 * and what to do, and whatever connections the run opened are closed before it returns.
 */
export async function runProgram(description: string, commands: CommandFactory[], argv: string[], version?: string): Promise<number> {
  let exitCode = 0;
  const setExit = (code: number): void => {
    exitCode = code;
  };
  const program = new Command('autotest').description(description).exitOverride().showHelpAfterError();
  if (version !== undefined) program.version(`autotest ${version}`, '-V, --version', 'print "autotest VERSION"');
  for (const command of commands) program.addCommand(command(processOutput, setExit).exitOverride());
  try {
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      return error.code === 'commander.helpDisplayed' || error.code === 'commander.version' || error.exitCode === 0 ? 0 : EXIT_USAGE;
    }
    return printError(processOutput, error);
  } finally {
    await closeConnections();
  }
  return exitCode;
}
