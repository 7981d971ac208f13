/** What the packager reports while it works; the CLI turns these into progress or lines. */
export type PackagerEvent =
  | { type: 'plan'; packages: number; toPack: number; locations: number }
  | { type: 'packed'; file: string; size: number; seconds: number }
  | { type: 'published'; file: string; location: string; size: number }
  | { type: 'unchanged'; file: string; location: string }
  | { type: 'removed'; file: string; location: string }
  | { type: 'package-failed'; file: string; error: string; hint?: string | undefined }
  | { type: 'location-failed'; location: string; error: string; hint?: string | undefined }
  | { type: 'warning'; message: string };

export type EventSink = (event: PackagerEvent) => void;

export interface LocationReport {
  location: string;
  created: boolean;
  published: string[];
  unchanged: string[];
  removed: string[];
  missing: string[];
  error: { code: string; message: string; hint: string | undefined } | undefined;
}

export interface OperationReport {
  packed: string[];
  failedPackages: { file: string; code: string; message: string; hint: string | undefined }[];
  locations: LocationReport[];
  ok: boolean;
}

export function emptyLocationReport(location: string): LocationReport {
  return { location, created: false, published: [], unchanged: [], removed: [], missing: [], error: undefined };
}
