import type { FetchSettings, Location } from '../../config/index.js';
import { describeLocation } from '../../config/index.js';
import { FetchFailure } from '../read-failure.js';
import { httpGet, repositoryOverGet, type RefusedAnswer, type RepositoryGet } from '../http/read.js';
import type { FetchRepository } from '../types.js';
import { s3AnswerProblem, s3Problem } from './client.js';
import type { HttpAgents } from '../http/agents.js';
import { signGet, type S3Signers } from './sign.js';

/**
 * An S3 error answer as a FetchFailure: the code of its XML document (NoSuchKey, NoSuchBucket,
 * AccessDenied, SignatureDoesNotMatch...) says whether the next repository should be tried
 * and the repository cooled down.
 */
const s3Refusal: RefusedAnswer = (status, body, what) => {
  const problem = s3AnswerProblem(status, body);
  const failure = (transient: boolean, down: boolean, extra: { notFound?: boolean; rangeRefused?: boolean } = {}): FetchFailure =>
    new FetchFailure(`${what}: ${problem.why}`, { transient, down, ...extra });
  switch (problem.kind) {
    case 'notFound':
      return failure(false, false, { notFound: true });
    case 'range':
      return failure(true, false, { rangeRefused: true });
    // Answers, so they came back at once: the next repository, but no cool-down.
    case 'denied':
    case 'noBucket':
    case 'noCredentials':
      return failure(false, false);
    case 'unreachable':
      return failure(false, true);
    case 'transient':
      return failure(true, false);
    default:
      return failure(false, false);
  }
};

/**
 * An S3 prefix read with signed GETs (SigV4, the SDK's signer and credential chain) over the
 * same HTTP code as the other repositories: keep-alive, timeouts, Range from the resume point.
 */
export function s3Repository(
  location: Extract<Location, { kind: 's3' }>,
  settings: FetchSettings,
  parts: { agents: HttpAgents; signers: S3Signers },
): FetchRepository {
  const name = describeLocation(location);
  const get: RepositoryGet = async (file, offset, timeoutMs = settings.timeoutMs, conditions = {}) => {
    const what = `${name}/${file}`;
    let signed;
    try {
      signed = await signGet(location, file, parts.signers);
    } catch (error) {
      // No credentials found: a setting to fix, not a server to wait for.
      throw new FetchFailure(`${what}: ${s3Problem(error).why}`, { transient: false, down: false, cause: error });
    }
    // If-None-Match is not among the signed headers: S3 takes it unsigned.
    return httpGet(signed.url, offset, {
      headers: { ...signed.headers, ...conditions },
      what,
      settings: { ...settings, timeoutMs },
      refusal: s3Refusal,
      agents: parts.agents,
    });
  };
  return repositoryOverGet(name, get);
}
