import type { FetchTls, Location } from '../config/index.js';
import { describeLocation } from '../config/index.js';
import { createUploadTarget } from '../repositories/index.js';
import type { IndexSigning } from '../signing/index.js';
import { toFailure } from './failure.js';
import { withResources, type Resources } from '../resources.js';

export interface UpkeepReport {
  location: string;
  removed: string[];
  error: { code: string; message: string; hint: string | undefined } | undefined;
}

const DAY_MS = 24 * 3600 * 1000;

/**
 * `packager upkeep`: in each custom location, deletes the files last modified more than
 * `maxAgeDays` days ago (modification time: access times are often not kept), taking them
 * out of the index first. Locations are done in parallel; one failing does not stop the rest.
 */
/** `options.resources`: the command's connections; by default the upkeep's own, closed when it ends. */
export function upkeepLocations(
  locations: Location[],
  maxAgeDays: number,
  options: { now?: number; signing?: IndexSigning | undefined; tls?: FetchTls | undefined; resources?: Resources | undefined } = {},
): Promise<UpkeepReport[]> {
  return withResources(options.resources, (resources) => upkeepWith(locations, maxAgeDays, { ...options, resources }));
}

function upkeepWith(
  locations: Location[],
  maxAgeDays: number,
  options: { now?: number; signing?: IndexSigning | undefined; tls?: FetchTls | undefined; resources: Resources },
): Promise<UpkeepReport[]> {
  const cutoff = (options.now ?? Date.now()) - maxAgeDays * DAY_MS;
  return Promise.all(
    locations.map(async (location) => {
      try {
        const target = createUploadTarget(location, { signing: options.signing, tls: options.tls, resources: options.resources });
        await target.cleanTemps();
        return { location: describeLocation(location), removed: await target.expire(cutoff), error: undefined };
      } catch (error) {
        return { location: describeLocation(location), removed: [], error: toFailure(error) };
      }
    }),
  );
}
