import type { FetchTls, Location } from '../config/index.js';
import { describeLocation } from '../config/index.js';
import { parseFileName } from '../packages/index.js';
import { createUploadTarget } from '../repositories/index.js';
import { toFailure } from './failure.js';
import { withResources, type Resources } from '../resources.js';

export interface ListedPackage {
  file: string;
  type: string;
  name: string;
  size: number | undefined;
  md5: string;
  sha256: string | undefined;
  publishedAt: string | undefined;
}

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
        const packages = [...index.values()].map((entry) => {
          const parsed = parseFileName(entry.file);
          return {
            file: entry.file,
            type: parsed.type ?? 'file',
            name: parsed.name,
            size: entry.size,
            md5: entry.md5,
            sha256: entry.sha256,
            publishedAt: entry.publishedAt,
          };
        });
        return { location: describeLocation(location), packages, error: undefined };
      } catch (error) {
        return { location: describeLocation(location), packages: [], error: toFailure(error) };
      }
    }),
  );
}
