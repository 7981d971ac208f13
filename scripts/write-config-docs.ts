// Writes the README's key tables from the declarations of src/config/keys.ts (npm run docs:config).
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeKeyTables } from '../src/config/docs.js';

const readmeFile = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'README.md');
const before = await readFile(readmeFile, 'utf8');
const after = writeKeyTables(before);
if (after === before) console.log(`${readmeFile}: the key tables are up to date`);
else {
  await writeFile(readmeFile, after);
  console.log(`${readmeFile}: key tables written`);
}
