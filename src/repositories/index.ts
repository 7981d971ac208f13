import { AutotestError } from '../errors.js';
import type { FetchSettings, Location } from '../config/index.js';
import { gitRepository } from './git/read.js';
import { httpRepository } from './http/read.js';
import { localRepository } from './local/read.js';
import { createLocalTarget } from './local/write.js';
import { s3Repository } from './s3/read.js';
import { sshRepository } from './ssh/read.js';
import { createSshTarget } from './ssh/write.js';
import type { TargetOptions } from './store.js';
import type { FetchRepository, UploadTarget } from './types.js';
import type { Resources } from '../resources.js';
import { sshHost } from '../ssh/session.js';
import { HTTP_AGENTS } from './http/agents.js';
import { S3_SIGNERS } from './s3/sign.js';

/**
 * One folder per repository scheme (local, ssh, http, s3, git): SCHEME/read.ts is how clients
 * and the caching front read it, SCHEME/write.ts (where the scheme can be written) is the
 * packager's upload target. This file picks the one for a location.
 */

export { readLocalIndex, createLocalTarget } from './local/write.js';
export { fetchFromLocal } from './local/copy.js';
export { readIndexBody } from './read-index.js';
export { matchesEntry } from '../packages/index.js';
export { withIndexLock, LOCK_NAME } from './lock.js';
export type { UploadTarget, StagedFile, IndexChange, FetchRepository, Opened, Revalidated } from './types.js';
export type { TargetOptions } from './store.js';

/** The read side of a location: how clients fetch from it, over the connections `resources` keep. */
export function fetchRepositoryFor(location: Location, settings: FetchSettings, resources: Resources): FetchRepository {
  switch (location.kind) {
    case 's3':
      return s3Repository(location, settings, { agents: resources.get(HTTP_AGENTS), signers: resources.get(S3_SIGNERS) });
    case 'http':
      return httpRepository(location, settings, resources.get(HTTP_AGENTS));
    case 'ssh':
      return sshRepository(location, settings, sshHost(location, resources));
    case 'local':
      return localRepository(location);
    case 'git':
      return gitRepository(location, settings);
  }
}

/**
 * The upload target for a location, or an error naming a scheme this version cannot write to.
 * An ssh or s3 target keeps its connections in `options.resources`.
 */
export function createUploadTarget(location: Location, options: TargetOptions & { resources: Resources }): UploadTarget {
  if (location.kind === 'local') return createLocalTarget(location, options);
  if (location.kind === 'ssh') return createSshTarget(location, options);
  if (location.kind === 's3') return lazyTarget(location, () => import('./s3/write.js').then((module) => module.createS3Target(location, options)));
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
