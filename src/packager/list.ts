import type { FetchTls, Location } from '../config/index.js';
import { describeLocation } from '../config/index.js';
import { listedEntries, type ListedEntry } from '../packages/index.js';
import { createUploadTarget } from '../repositories/index.js';
import { toFailure } from './failure.js';
import { withResources, type Resources } from '../resources.js';

/** A package of a location's index, as listed. */
export type ListedPackage = ListedEntry;

export interface ListReport {
  location: string;
  packages: ListedPackage[];
  error: { code: string; message: string; hint: string | undefined } | undefined;
}

/** `packager list`: what each location's index holds. */
/**
 * `resources`: the command's connections; by default the listing's own, closed when it ends.
 * `tls`: fetch_ca_file and the client certificate, for an https S3 endpoint.
 */
export async function listLocations(locations: Location[], resources?: Resources, tls?: FetchTls): Promise<ListReport[]> {
  return withResources(resources, (owned) => listWith(locations, owned, tls));
}

function listWith(locations: Location[], resources: Resources, tls: FetchTls | undefined): Promise<ListReport[]> {
  return Promise.all(
    locations.map(async (location) => {
      try {
        const index = await createUploadTarget(location, { resources, tls }).readIndex();
        const packages = listedEntries(index);
        return { location: describeLocation(location), packages, error: undefined };
      } catch (error) {
        return { location: describeLocation(location), packages: [], error: toFailure(error) };
      }
    }),
  );
}
