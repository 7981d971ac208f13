#!/usr/bin/env node
/**
 * The client runtime's own entry point: only `autotest client` (install and run), bundled into
 * one file with its dependencies (npm run build) so that it travels inside the client package
 * to test machines that have Node.js and nothing else.
 */
import { clientCommand } from './client.js';
import { runProgram } from './run.js';

process.exitCode = await runProgram('Autotest client: install packages and run jobs', [clientCommand], process.argv);
