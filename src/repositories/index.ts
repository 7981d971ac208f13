import { AutotestError } from '../errors.js';
import type { Location } from '../config/index.js';
import { createLocalTarget } from './local.js';
import { createSshTarget } from './ssh.js';
import type { TargetOptions } from './store.js';
import type { UploadTarget } from './types.js';

export { readLocalIndex, createLocalTarget } from './local.js';
export { fetchFromLocal } from './local-fetch.js';
export { matchesEntry } from '../packages/index.js';
export { withIndexLock, LOCK_NAME } from './lock.js';
export type { UploadTarget, StagedFile, IndexChange } from './types.js';
export type { TargetOptions } from './store.js';

/** The upload target for a location, or an error naming a scheme this version cannot write to. */
export function createUploadTarget(location: Location, options: TargetOptions = {}): UploadTarget {
  if (location.kind === 'local') return createLocalTarget(location, options);
  if (location.kind === 'ssh') return createSshTarget(location, options);
  if (location.kind === 's3') return lazyTarget(location, () => import('./s3.js').then((module) => module.createS3Target(location, options)));
  throw new AutotestError('ERR_UNSUPPORTED', `upload location ${location.text}: ${location.kind} locations are read-only (fetch_location only)`, {
    hint: 'upload to a local folder, an ssh://[user@]host[:port]/path or an s3://bucket/prefix location',
  });
}

/**
 * A target whose implementation is loaded on its first use: the S3 one brings the AWS SDK,
 * which only commands that touch S3 should pay for (see loadS3Sdk).
 */
function lazyTarget(location: Location, load: () => Promise<UploadTarget>): UploadTarget {
  let loaded: Promise<UploadTarget> | undefined;
  const target = (): Promise<UploadTarget> => (loaded ??= load());
  return {
    location,
    name: location.text,
    prepare: async (options) => (await target()).prepare(options),
    readIndex: async () => (await target()).readIndex(),
    fileSize: async (file) => (await target()).fileSize(file),
    stage: async (file, source) => (await target()).stage(file, source),
    commit: async (change) => (await target()).commit(change),
    discard: async (staged) => (await target()).discard(staged),
    listFiles: async () => (await target()).listFiles(),
    digestFile: async (file) => (await target()).digestFile(file),
    cleanTemps: async () => (await target()).cleanTemps(),
    purge: async (files) => (await target()).purge(files),
    expire: async (olderThanMs) => (await target()).expire(olderThanMs),
    sign: async () => (await target()).sign(),
    readSignedPair: async () => (await target()).readSignedPair(),
  };
}
