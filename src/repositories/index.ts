import { AutotestError } from '../errors.js';
import type { Location } from '../config/index.js';
import { createLocalTarget } from './local.js';
import type { UploadTarget } from './types.js';

export { readLocalIndex, createLocalTarget } from './local.js';
export { fetchFromLocal } from './local-fetch.js';
export { matchesEntry } from '../packages/index.js';
export { withIndexLock, LOCK_NAME } from './lock.js';
export type { UploadTarget, StagedFile, IndexChange } from './types.js';

/** The upload target for a location, or an error naming a scheme this version cannot write to. */
export function createUploadTarget(location: Location): UploadTarget {
  if (location.kind === 'local') return createLocalTarget(location);
  throw new AutotestError('ERR_UNSUPPORTED', `upload location ${location.text}: ${location.kind} upload locations are not supported yet`, {
    hint: 'use a local folder in upload_location for now',
  });
}
