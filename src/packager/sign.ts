import type { Location } from '../config/index.js';
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
/** `resources`: the command's connections; by default the signing's own, closed when it ends. */
export function signLocations(locations: Location[], signing: IndexSigning, resources?: Resources): Promise<SignReport[]> {
  return withResources(resources, (owned) => signWith(locations, signing, owned));
}

function signWith(locations: Location[], signing: IndexSigning, resources: Resources): Promise<SignReport[]> {
  return Promise.all(
    locations.map(async (location) => {
      try {
        return { location: describeLocation(location), serial: await createUploadTarget(location, { signing, resources }).sign(), error: undefined };
      } catch (error) {
        return { location: describeLocation(location), serial: undefined, error: toFailure(error) };
      }
    }),
  );
}
