import type { S3Client } from '@aws-sdk/client-s3';
import type { FetchTls, S3Location, S3Settings } from '../../config/index.js';
import { errnoCode } from '../../errors.js';
import type { ResourceKind, Resources } from '../../resources.js';
import { HttpAgents } from '../http/agents.js';
import { isTlsCode } from '../read-failure.js';

// The SDK warns on every process start that its releases after January 2027 want Node.js 22;
// that line would land in every command's output. The switch is the SDK's own.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

/**
 * The SDK, loaded on first use only: merely loading @aws-sdk/client-s3 made every other
 * download of the process (HTTP from nginx) a third slower here (0.9x of curl's throughput
 * to 0.6x; cause inside the SDK not found), and commands without S3 start faster without it.
 */
export function loadS3Sdk(): Promise<typeof import('@aws-sdk/client-s3')> {
  sdk ??= import('@aws-sdk/client-s3');
  return sdk;
}

let sdk: Promise<typeof import('@aws-sdk/client-s3')> | undefined;

/**
 * The S3 clients of one owner (a command, a server), one per settings and TLS files, for the
 * packager and the uploads (fetches are signed GETs, see sign.ts): the SDK retries throttling
 * and 5xx answers. Credentials come from the SDK's default chain only. Their connections are
 * kept by agents of their own, built from the TLS files as for fetching (fetch_ca_file with the
 * system's roots, the client certificate), one https agent per set of files.
 */
export class S3Clients {
  private readonly clients = new Map<string, Promise<S3Client>>();
  private readonly agents = new HttpAgents();

  clientFor(settings: S3Settings, tls?: FetchTls): Promise<S3Client> {
    const key = JSON.stringify([settings, tls?.ca?.pem, tls?.clientCert?.pem, tls?.clientKey?.pem]);
    let client = this.clients.get(key);
    if (!client) {
      client = this.create(settings, tls);
      this.clients.set(key, client);
    }
    return client;
  }

  private async create(settings: S3Settings, tls: FetchTls | undefined): Promise<S3Client> {
    const { S3Client } = await loadS3Sdk();
    const mode = settings.checksumMode === 'when_required' ? 'WHEN_REQUIRED' : 'WHEN_SUPPORTED';
    return new S3Client({
      ...(settings.endpoint === undefined ? {} : { endpoint: settings.endpoint }),
      ...(settings.profile === undefined ? {} : { profile: settings.profile }),
      region: settings.region,
      forcePathStyle: settings.pathStyle,
      // A bucket in another AWS region than `region`: follow S3's redirect instead of failing with 301.
      followRegionRedirects: true,
      requestChecksumCalculation: mode,
      responseChecksumValidation: mode,
      maxAttempts: 4,
      // The SDK builds its Node.js handler from these options.
      requestHandler: {
        connectionTimeout: 10_000,
        socketTimeout: 120_000,
        httpAgent: this.agents.httpAgent,
        httpsAgent: this.agents.httpsAgent(tls),
      },
    });
  }

  /** Closes kept-alive S3 connections so a command ends when its work is done. */
  async close(): Promise<void> {
    const clients = [...this.clients.values()];
    this.clients.clear();
    for (const client of await Promise.allSettled(clients)) {
      if (client.status === 'fulfilled') client.value.destroy();
    }
    this.agents.close();
  }
}

export const S3_CLIENTS: ResourceKind<S3Clients> = {
  name: 'S3 clients',
  create: () => new S3Clients(),
  close: (clients) => clients.close(),
};

/** The S3 client `resources` keep for `settings` and `tls` (an upload target's resources: see TargetOptions). */
export function s3Client(settings: S3Settings, resources: Resources | undefined, tls?: FetchTls): Promise<S3Client> {
  if (!resources) throw new Error('an S3 client asked for without the resources of a command or server');
  return resources.get(S3_CLIENTS).clientFor(settings, tls);
}

/** The object key of a repository file. */
export function s3Key(location: S3Location, file: string): string {
  return location.prefix === '' ? file : `${location.prefix}/${file}`;
}

export type S3FailureKind =
  'notFound' | 'noBucket' | 'denied' | 'noCredentials' | 'unreachable' | 'tls' | 'precondition' | 'range' | 'notModified' | 'transient' | 'other';

export interface S3Problem {
  kind: S3FailureKind;
  /** What went wrong, for a message: never the secret, never a signature. */
  why: string;
  status: number | undefined;
}

const CREDENTIALS_HINT =
  'check the credentials the AWS SDK finds (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, the [S3] profile) and the bucket policy';
const UNREACHABLE = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EADDRNOTAVAIL']);

function statusOf(error: unknown): number | undefined {
  if (typeof error !== 'object' || error === null || !('$metadata' in error)) return undefined;
  const metadata = (error as { $metadata?: { httpStatusCode?: number } }).$metadata;
  return metadata?.httpStatusCode;
}

/**
 * Sorts an SDK error into what the caller acts on. The text is built from the error's code
 * and status only: S3 answers can carry a StringToSign or a canonical request, and an error
 * message is never where a credential may leak from.
 */
export function s3Problem(error: unknown): S3Problem {
  const status = statusOf(error);
  const name = error instanceof Error ? error.name : 'Error';
  const code = errnoCode(error);
  if (typeof code === 'string' && UNREACHABLE.has(code)) return { kind: 'unreachable', why: `cannot connect to the S3 endpoint (${code})`, status };
  if (name === 'TimeoutError' || code === 'ETIMEDOUT' || name === 'RequestTimeout')
    return { kind: 'unreachable', why: 'no answer from the S3 endpoint in time', status };
  // An https endpoint whose certificate is not trusted: a setting to fix, never worth a retry.
  if (typeof code === 'string' && isTlsCode(code)) return { kind: 'tls', why: `TLS failed (${code})`, status };
  if (name === 'CredentialsProviderError' || /credential/i.test(name)) {
    return { kind: 'noCredentials', why: `no AWS credentials found; ${CREDENTIALS_HINT}`, status };
  }
  // An answer of the S3 server (the SDK's service exceptions carry $metadata and $fault).
  if (status !== undefined || (typeof error === 'object' && error !== null && '$fault' in error)) {
    if (name === 'NoSuchBucket') return { kind: 'noBucket', why: 'the bucket does not exist (NoSuchBucket)', status };
    if (name === 'NoSuchKey' || name === 'NotFound' || status === 404) return { kind: 'notFound', why: `not found (${name}, 404)`, status };
    if (name === 'InvalidAccessKeyId' || name === 'SignatureDoesNotMatch' || name === 'AccessDenied' || status === 403 || status === 401) {
      return { kind: 'denied', why: `access denied (${name}, ${String(status ?? 403)}); ${CREDENTIALS_HINT}`, status };
    }
    // AWS answers 409 ConditionalRequestConflict to a conditional write racing another: try again, as for 412.
    if (name === 'PreconditionFailed' || status === 412 || name === 'ConditionalRequestConflict')
      return { kind: 'precondition', why: `changed meanwhile (${String(status ?? 412)})`, status };
    if (name === 'InvalidRange' || status === 416) return { kind: 'range', why: 'the range asked is not satisfiable (416)', status };
    if (status === 304) return { kind: 'notModified', why: 'not modified (304)', status };
    if (status !== undefined && (status >= 500 || status === 429 || status === 408 || name === 'SlowDown')) {
      return { kind: 'transient', why: `the S3 server answered ${String(status)} (${name})`, status };
    }
    return { kind: 'other', why: `the S3 server answered ${String(status ?? '?')} (${name})`, status };
  }
  if (typeof code === 'string') return { kind: 'transient', why: `connection broke off (${code})`, status };
  return { kind: 'other', why: name === 'Error' && error instanceof Error ? error.message : name, status };
}

/** What an S3 error answer means, from its status and the <Code> of its XML document (empty for HEAD). */
export function s3AnswerProblem(status: number, body: string): S3Problem {
  const code = /<Code>([A-Za-z0-9.]{1,64})<\/Code>/.exec(body)?.[1] ?? (status === 404 ? 'NotFound' : 'Error');
  return s3Problem(Object.assign(new Error(code), { name: code, $metadata: { httpStatusCode: status }, $fault: status >= 500 ? 'server' : 'client' }));
}
