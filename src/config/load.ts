import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { AutotestError, errnoCode } from '../errors.js';
import { overlayIni, parseIni, type IniDocument } from './ini.js';
import { renderEmbeddedConfig } from './keys.js';
import { misspeltSections } from './suggest.js';
import { readPackagesConfig, type Config } from './schema.js';
import { readServerConfig } from './server-section.js';
import { readTlsFiles } from './tls.js';
import { readTrustedKeys, SIGNATURE_NAMESPACE } from '../signing/index.js';

/** The environment variable that names the global config file when --config is not given. */
export const CONFIG_ENV = 'AUTOTEST_CONFIG';
export const EMBEDDED_SOURCE = '(embedded default)';

/**
 * With no config file: repositories are folders under the working directory, so that a
 * fresh checkout publishes and installs without any set-up.
 */
export const EMBEDDED_DEFAULT = renderEmbeddedConfig();

async function readOptional(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') return undefined;
    throw new AutotestError('ERR_CONFIG', `cannot read config file ${file}: ${errnoCode(error) ?? String(error)}`, { cause: error });
  }
}

export interface LoadConfigOptions {
  /** --config PATH */
  file?: string | undefined;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /**
   * False for autoserv: fetch_client_cert and fetch_client_key name files on its hosts, which
   * are passed on and not read here (default true).
   */
  readClientCertificate?: boolean;
}

/** Where the config comes from: --config, then $AUTOTEST_CONFIG, then the embedded default. */
export function chooseConfigFile(options: LoadConfigOptions): string | undefined {
  const env = options.env ?? process.env;
  const chosen = options.file ?? env[CONFIG_ENV];
  return chosen === undefined || chosen === '' ? undefined : path.resolve(options.cwd ?? process.cwd(), chosen);
}

export async function loadConfig(options: LoadConfigOptions = {}): Promise<Config> {
  const cwd = options.cwd ?? process.cwd();
  const file = chooseConfigFile(options);
  let doc: IniDocument;
  let source: string;
  if (file === undefined) {
    doc = parseIni(EMBEDDED_DEFAULT, EMBEDDED_SOURCE);
    source = EMBEDDED_SOURCE;
  } else {
    const text = await readOptional(file);
    if (text === undefined) {
      throw new AutotestError('ERR_CONFIG', `config file ${file} does not exist`, {
        hint: `check --config or $${CONFIG_ENV}; etc/global_config.example.ini lists every key`,
      });
    }
    doc = parseIni(text, file);
    const shadowFile = path.join(path.dirname(file), 'shadow_config.ini');
    const shadow = await readOptional(shadowFile);
    if (shadow !== undefined) doc = overlayIni(doc, parseIni(shadow, shadowFile));
    source = file;
  }
  const baseDirOf = (from: string): string => (from === EMBEDDED_SOURCE ? cwd : path.dirname(from));
  const { packages, warnings } = readPackagesConfig(doc, baseDirOf, options.env ?? process.env);
  packages.fetch.tls = await readTlsFiles(packages.fetch.tls, { readClientCertificate: options.readClientCertificate ?? true });
  const { trust } = packages.fetch;
  if (trust) {
    // Read at load, as the TLS files are: a missing or empty trusted_keys is a config error
    // naming its key, not a refusal of every repository at the first install.
    const trusted = await readTrustedKeys(trust.file.file, trust.file.setAt, SIGNATURE_NAMESPACE);
    packages.fetch.trust = { ...trust, keys: trusted.keys.map((key) => key.publicBlob), text: trusted.text };
    warnings.push(...trusted.warnings);
  }
  const { server, warnings: serverWarnings } = readServerConfig(doc, baseDirOf, packages, options.env ?? process.env);
  return { source, packages, server, warnings: [...misspeltSections(doc, source), ...warnings, ...serverWarnings] };
}
