import type { FetchTls, Location } from '../config/index.js';
import { describeLocation } from '../config/index.js';
import { createUploadTarget } from '../repositories/index.js';
import type { IndexSigning } from '../signing/index.js';
import { toFailure } from './failure.js';
import { withResources, type Resources } from '../resources.js';

export interface SignReport {
  location: string;
  /** The serial of the index signed; undefined when it failed. */
  serial: number | undefined;
  error: { code: string; message: string; hint: string | undefined } | undefined;
}

/**
 * `packager sign`: writes each location's index again under its lock with a new serial (and
 * expiry), signed: after a key rotation, or to renew index_valid_days. One failing location
 * does not stop the rest.
 */
/**
 * `options.resources`: the command's connections; by default the signing's own, closed when it
 * ends. `options.tls`: fetch_ca_file and the client certificate, for an https S3 endpoint.
 */
export function signLocations(
  locations: Location[],
  signing: IndexSigning,
  options: { resources?: Resources | undefined; tls?: FetchTls | undefined } = {},
): Promise<SignReport[]> {
  return withResources(options.resources, (owned) => signWith(locations, signing, { resources: owned, tls: options.tls }));
}

function signWith(locations: Location[], signing: IndexSigning, options: { resources: Resources; tls: FetchTls | undefined }): Promise<SignReport[]> {
  return Promise.all(
    locations.map(async (location) => {
      try {
        return { location: describeLocation(location), serial: await createUploadTarget(location, { signing, ...options }).sign(), error: undefined };
      } catch (error) {
        return { location: describeLocation(location), serial: undefined, error: toFailure(error) };
      }
    }),
  );
}
