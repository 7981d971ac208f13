import { Command, CommanderError } from 'commander';
import { Resources } from '../resources.js';
import { EXIT_USAGE, printError, processOutput, type Output } from './output.js';

/** Where a command prints, and what it keeps open for reuse until the run ends. */
export interface Running {
  output: Output;
  resources: Resources;
}

/** A command of the program; what it opens for reuse goes in `resources`, closed when the run ends. */
export type CommandFactory = (output: Output, setExit: (code: number) => void, resources: Resources) => Command;

/**
 * Runs a command line made of `commands`: usage errors exit 2, failures print what, where
 * and what to do, and whatever connections the run opened are closed before it returns.
 */
export async function runProgram(description: string, commands: CommandFactory[], argv: string[], version?: string): Promise<number> {
  let exitCode = 0;
  const setExit = (code: number): void => {
    exitCode = code;
  };
  const resources = new Resources();
  const program = new Command('autotest').description(description).exitOverride().showHelpAfterError();
  if (version !== undefined) program.version(`autotest ${version}`, '-V, --version', 'print "autotest VERSION"');
  for (const command of commands) program.addCommand(command(processOutput, setExit, resources).exitOverride());
  try {
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      return error.code === 'commander.helpDisplayed' || error.code === 'commander.version' || error.exitCode === 0 ? 0 : EXIT_USAGE;
    }
    return printError(processOutput, error);
  } finally {
    await resources.close();
  }
  return exitCode;
}
