import { stat } from 'node:fs/promises';
import type { S3Location } from '../../config/index.js';
import type { TargetOptions } from '../store.js';
import type { UploadTarget } from '../types.js';
import { IndexProtocol } from './index-protocol.js';
import { openS3Store } from './s3-store.js';

/**
 * An S3 prefix as a repository: the index protocol of conditional writes (index-protocol.ts)
 * over the prefix as a conditional store (s3-store.ts).
 */
export async function createS3Target(location: S3Location, options: TargetOptions = {}): Promise<UploadTarget> {
  const store = await openS3Store(location, options.resources, options.tls);
  const index = new IndexProtocol(store, options);
  return {
    location,
    name: index.name,
    async prepare() {
      await store.check();
      return { created: false };
    },
    readIndex: () => index.readIndex(),
    fileSize: (file) => index.fileSize(file),
    stage: async (file, source) => index.stage(file, { path: source, size: (await stat(source)).size }),
    commit: (change) => index.commit(change),
    discard: (staged) => index.discard(staged),
    listFiles: () => index.listFiles(),
    digestFile: (file) => index.digestFile(file),
    cleanTemps: () => index.cleanTemps(),
    purge: (files) => index.purge(files),
    expire: (olderThanMs) => index.expire(olderThanMs),
    readSignedPair: () => index.readSignedPair(),
    sign: () => index.sign(),
  };
}
