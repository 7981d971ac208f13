#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { autoservCommand } from './autoserv.js';
import { clientCommand } from './client.js';
import { packagerCommand } from './packager.js';
import { runProgram } from './run.js';
import { serveCommand } from './serve.js';
import { startCommand } from './start.js';

// dist/src/cli/main.js -> the package.json of the installation.
const { version } = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };

process.exitCode = await runProgram('Autotest package management: packager, repositories, installs, server and autoserv',
  [packagerCommand, startCommand, clientCommand, serveCommand, autoservCommand], process.argv, version);
