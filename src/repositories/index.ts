import { AutotestError } from '../errors.js';
import type { Location } from '../config/index.js';
import { createLocalTarget } from './local.js';
import { createS3Target } from './s3.js';
import { createSshTarget } from './ssh.js';
import type { UploadTarget } from './types.js';

export { readLocalIndex, createLocalTarget } from './local.js';
export { fetchFromLocal } from './local-fetch.js';
export { matchesEntry } from '../packages/index.js';
export { withIndexLock, LOCK_NAME } from './lock.js';
export type { UploadTarget, StagedFile, IndexChange } from './types.js';

/** The upload target for a location, or an error naming a scheme this version cannot write to. */
export function createUploadTarget(location: Location): UploadTarget {
  if (location.kind === 'local') return createLocalTarget(location);
  if (location.kind === 'ssh') return createSshTarget(location);
  if (location.kind === 's3') return createS3Target(location);
  throw new AutotestError('ERR_UNSUPPORTED', `upload location ${location.text}: ${location.kind} locations are read-only (fetch_location only)`, {
    hint: 'upload to a local folder, an ssh://[user@]host[:port]/path or an s3://bucket/prefix location',
  });
}
