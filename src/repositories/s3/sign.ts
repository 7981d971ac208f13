import type { SignatureV4 } from '@smithy/signature-v4';
import type { S3Location, S3Settings } from '../../config/index.js';
import type { ResourceKind } from '../../resources.js';
import { s3Key } from './client.js';

/** A GET of one object, signed: the URL and the headers to send with it. */
export interface SignedGet {
  url: URL;
  headers: Record<string, string>;
}

/**
 * The SigV4 signers of one owner (a command, a server), one per region and profile, each with
 * the SDK's standard credential chain (environment, shared files under `profile`, SSO, web
 * identity, instance roles). Loaded on first use: the client's downloads from S3 go through
 * the same HTTP code as every other repository, and loading the full S3 client would slow
 * them (see loadS3Sdk).
 */
export class S3Signers {
  private readonly signers = new Map<string, Promise<SignatureV4>>();

  signerFor(settings: S3Settings): Promise<SignatureV4> {
    const id = JSON.stringify([settings.region, settings.profile]);
    let signer = this.signers.get(id);
    if (!signer) {
      signer = createSigner(settings);
      // A failure (no credentials) is not kept: the next try may find them.
      signer.catch(() => this.signers.delete(id));
      this.signers.set(id, signer);
    }
    return signer;
  }

  /** Forgets the signers (and the credentials they cached). */
  close(): void {
    this.signers.clear();
  }
}

export const S3_SIGNERS: ResourceKind<S3Signers> = {
  name: 'S3 signers',
  create: () => new S3Signers(),
  close: (signers) => {
    signers.close();
  },
};

async function createSigner(settings: S3Settings): Promise<SignatureV4> {
  const [{ SignatureV4 }, { Sha256 }, { defaultProvider }] = await Promise.all([
    import('@smithy/signature-v4'),
    import('@smithy/core/checksum'),
    import('@aws-sdk/credential-provider-node'),
  ]);
  return new SignatureV4({
    service: 's3',
    region: settings.region,
    credentials: defaultProvider(settings.profile === undefined ? {} : { profile: settings.profile }),
    sha256: Sha256,
    // S3 signs the path as sent (each key segment escaped once, here).
    uriEscapePath: false,
    applyChecksum: false,
  });
}

/** The URL of an object: path style (bucket in the path) or virtual-hosted (bucket in the host name). */
export function objectUrl(location: S3Location, file: string): URL {
  const { endpoint, pathStyle, region } = location.settings;
  const keyPath = s3Key(location, file).split('/').map(encodeURIComponent).join('/');
  const base = new URL(endpoint ?? `https://s3.${region}.amazonaws.com`);
  const basePath = base.pathname.replace(/\/+$/, '');
  if (pathStyle) return new URL(`${base.protocol}//${base.host}${basePath}/${encodeURIComponent(location.bucket)}/${keyPath}`);
  return new URL(`${base.protocol}//${location.bucket}.${base.host}${basePath}/${keyPath}`);
}

/** Signs a GET (or HEAD) of `file`; the payload is empty: UNSIGNED-PAYLOAD, as S3 allows for reads. */
export async function signGet(location: S3Location, file: string, signers: S3Signers, method: 'GET' | 'HEAD' = 'GET'): Promise<SignedGet> {
  const url = objectUrl(location, file);
  const signer = await signers.signerFor(location.settings);
  const signed = await signer.sign({
    method,
    protocol: url.protocol,
    hostname: url.hostname,
    ...(url.port === '' ? {} : { port: Number(url.port) }),
    path: url.pathname,
    query: {},
    headers: { host: url.host, 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' },
  });
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(signed.headers)) headers[name] = value;
  return { url, headers };
}
