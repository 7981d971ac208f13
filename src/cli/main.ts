#!/usr/bin/env node
import { autoservCommand } from './autoserv.js';
import { clientCommand } from './client.js';
import { packagerCommand } from './packager.js';
import { runProgram } from './run.js';
import { serveCommand } from './serve.js';
import { startCommand } from './start.js';

process.exitCode = await runProgram('Autotest package management: packager, repositories, installs, server and autoserv',
  [packagerCommand, startCommand, clientCommand, serveCommand, autoservCommand], process.argv);
