import { AutotestError } from '../../errors.js';
import { TLS_HINT } from '../read-failure.js';
import type { S3Problem } from './client.js';

const DEFAULT_HINT =
  'check the [S3] section (endpoint, region, path_style) and the credentials; the index stays consistent, so running the command again finishes the work';

/** An S3 location's refusal: what was being done, why it failed, and what to do about it. */
export function refused(name: string, what: string, problem: S3Problem | string, cause?: unknown, hint?: string): AutotestError {
  const why = typeof problem === 'string' ? problem : problem.why;
  return new AutotestError('ERR_LOCATION_REFUSED', `S3 location ${name}: ${what}: ${why}`, { hint: hint ?? hintFor(problem), cause });
}

function hintFor(problem: S3Problem | string): string {
  if (typeof problem === 'string') return DEFAULT_HINT;
  if (problem.kind === 'noBucket') return 'create the bucket first (aws s3 mb, radosgw-admin or the console) or fix the location';
  if (problem.kind === 'tls') return TLS_HINT;
  return DEFAULT_HINT;
}
