import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { AutotestError, describeError, errnoCode } from '../errors.js';
import type { FetchTls, PemFile } from './schema.js';

export interface ReadTlsOptions {
  /**
   * False where fetch_client_cert and fetch_client_key name files on other machines
   * (autoserv's hosts): their paths are passed on, never read here.
   */
  readClientCertificate: boolean;
}

function refused(file: PemFile, why: string, hint: string, cause?: unknown): AutotestError {
  return new AutotestError('ERR_CONFIG', `${file.setAt} = ${file.file}: ${why}`, { hint, cause });
}

async function readPem(file: PemFile, what: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(file.file, 'utf8');
  } catch (error) {
    throw refused(
      file,
      `cannot read it (${errnoCode(error) ?? describeError(error)})`,
      `name a readable PEM file holding ${what}, or leave the key empty`,
      error,
    );
  }
  if (!text.includes('-----BEGIN '))
    throw refused(file, 'not a PEM file (no "-----BEGIN" line)', `name a PEM file holding ${what} (DER can be converted with openssl x509 -inform der)`);
  return text;
}

function parseCertificate(file: PemFile, pem: string): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch (error) {
    throw refused(
      file,
      `holds no certificate OpenSSL can read (${describeError(error)})`,
      'name a PEM file whose first block is "-----BEGIN CERTIFICATE-----"',
      error,
    );
  }
}

/**
 * Reads the PEM files of fetch_ca_file, fetch_client_cert and fetch_client_key once, when the
 * config is loaded, so a missing or wrong file is a config error naming its key rather than
 * a TLS failure at the first download. The key must be unencrypted and belong to the certificate.
 */
export async function readTlsFiles(tls: FetchTls | undefined, options: ReadTlsOptions): Promise<FetchTls | undefined> {
  if (!tls) return undefined;
  let ca = tls.ca;
  if (ca) {
    const pem = await readPem(ca, 'the CA certificates to trust');
    parseCertificate(ca, pem);
    ca = { ...ca, pem };
  }
  let { clientCert, clientKey } = tls;
  if (options.readClientCertificate && clientCert && clientKey) {
    const certPem = await readPem(clientCert, 'the client certificate');
    const certificate = parseCertificate(clientCert, certPem);
    const keyPem = await readPem(clientKey, 'the private key of fetch_client_cert');
    let key;
    try {
      key = createPrivateKey(keyPem);
    } catch (error) {
      throw refused(
        clientKey,
        `holds no unencrypted private key (${describeError(error)})`,
        'name the PEM private key of fetch_client_cert, without a passphrase',
        error,
      );
    }
    if (!certificate.checkPrivateKey(key)) {
      throw refused(clientKey, `is not the key of fetch_client_cert ${clientCert.file}`, 'name the private key that belongs to fetch_client_cert');
    }
    clientCert = { ...clientCert, pem: certPem };
    clientKey = { ...clientKey, pem: keyPem };
  }
  return { ca, clientCert, clientKey };
}
