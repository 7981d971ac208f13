import type { FetchTls, Location } from '../config/index.js';
import { describeLocation } from '../config/index.js';
import { createUploadTarget } from '../repositories/index.js';
import type { IndexSigning } from '../signing/index.js';
import { emptyLocationReport, type EventSink, type OperationReport } from './events.js';
import { toFailure } from './failure.js';
import { withResources, type Resources } from '../resources.js';

/**
 * `packager remove`: each file leaves the index first, then the folder, under the lock, so
 * no reader ever sees an entry without its file. A file a location does not hold is
 * reported as missing there, not as an error: the location is already as asked.
 */
export interface RemoveOptions {
  files: string[];
  locations: Location[];
  onEvent?: EventSink;
  signing?: IndexSigning | undefined;
  /** fetch_ca_file and the client certificate, for an https S3 endpoint. */
  tls?: FetchTls | undefined;
  /** The command's connections; by default the removal's own, closed when it ends. */
  resources?: Resources | undefined;
}

export function removePackages(options: RemoveOptions): Promise<OperationReport> {
  return withResources(options.resources, (resources) => removeWith({ ...options, resources }));
}

async function removeWith(options: RemoveOptions & { resources: Resources }): Promise<OperationReport> {
  const emit: EventSink = options.onEvent ?? (() => undefined);
  const report: OperationReport = { packed: [], failedPackages: [], locations: [], ok: true };
  await Promise.all(
    options.locations.map(async (location) => {
      const locationReport = emptyLocationReport(describeLocation(location));
      report.locations.push(locationReport);
      try {
        const target = createUploadTarget(location, { signing: options.signing, tls: options.tls, resources: options.resources });
        const index = await target.readIndex();
        const present: string[] = [];
        for (const file of options.files) {
          if (index.has(file) || (await target.fileSize(file)) !== undefined) present.push(file);
          else locationReport.missing.push(file);
        }
        if (present.length > 0) await target.commit({ add: [], refresh: [], remove: present });
        for (const file of present) {
          locationReport.removed.push(file);
          emit({ type: 'removed', file, location: target.name });
        }
      } catch (error) {
        locationReport.error = toFailure(error);
        emit({ type: 'location-failed', location: locationReport.location, error: locationReport.error.message, hint: locationReport.error.hint });
      }
    }),
  );
  report.ok = report.locations.length > 0 && report.locations.every((l) => !l.error);
  return report;
}
