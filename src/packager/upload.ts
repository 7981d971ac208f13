import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import pLimit from 'p-limit';
import type { Compression, Location } from '../config/index.js';
import { describeLocation } from '../config/index.js';
import { isAutotestError } from '../errors.js';
import {
  DigestStream, createCompressorPool, digestEntries, packEntries, treeFingerprint, type CompressorPool, type IndexEntry, type TreeEntry, type RepositoryIndex,
} from '../packages/index.js';
import { createUploadTarget, type StagedFile, type UploadTarget } from '../repositories/index.js';
import type { IndexSigning } from '../signing/index.js';
import { packageEntries, selectSources, type PackageSource, type Selection } from './client-tree.js';
import { emptyLocationReport, type EventSink, type LocationReport, type OperationReport } from './events.js';
import { toFailure } from './failure.js';
import { cacheDir, openPackState, type PackRecord, type PackState } from './state.js';
import { withResources, type Resources } from '../resources.js';

export interface UploadOptions {
  clientDir: string;
  selection: Selection;
  locations: Location[];
  compression: Compression;
  minimumFreeBytes: number;
  /** Packages packed at once (default: the number of cores). */
  jobs?: number;
  onEvent?: EventSink;
  /** Where the pack cache and staging folder live (default: ~/.cache/autotest). */
  cacheDir?: string;
  /** signing_key: every index written is signed. */
  signing?: IndexSigning | undefined;
  /** The command's connections; by default the upload's own, closed when it ends. */
  resources?: Resources | undefined;
}

interface LiveTarget {
  target: UploadTarget;
  report: LocationReport;
  index: RepositoryIndex;
}

/** Bumped when the tarball format changes, so every package is packed again. */
const FORMAT_SALT = 'autotest-tarball-v1';

/** Whether the location already holds this exact package (same source, file present, same size). */
async function holds(live: LiveTarget, file: string, sourceDigest: string | undefined): Promise<boolean> {
  const entry = live.index.get(file);
  if (!entry || sourceDigest === undefined || entry.sourceDigest !== sourceDigest) return false;
  const size = await live.target.fileSize(file);
  return size !== undefined && (entry.size === undefined || entry.size === size);
}

/**
 * A change this close to the walk may share its timestamp tick (Linux file times move in
 * coarse ticks of a few ms), so the fingerprint of such a tree is not trusted next time.
 */
const CLOCK_TICK_MS = 100;

/** A package folder as walked in the plan: its entries, when the walk began, and its bytes. */
interface Walked {
  entries: TreeEntry[];
  startedMs: number;
  bytes: number;
}

async function walkSource(source: PackageSource): Promise<Walked | undefined> {
  if (source.type === 'file') return undefined;
  const startedMs = Date.now();
  const entries = await packageEntries(source);
  return { entries, startedMs, bytes: entries.reduce((sum, entry) => sum + entry.size, 0) };
}

/**
 * A package up to this size goes through the compressor pool (its tar stream staged in a
 * file); a larger one streams into a compressor of its own, whose start costs nothing next
 * to its compression and which spares the staging folder a copy of its whole tar stream.
 */
const POOLED_MAX_BYTES = 32 * 1024 * 1024;

interface PackPlan {
  compression: Compression;
  threads: number;
  pool: CompressorPool | undefined;
}

async function packSource(source: PackageSource, walked: Walked | undefined, dest: string, options: PackPlan): Promise<{ record: PackRecord }> {
  if (source.type === 'file') {
    // Plain files are published as they are, from one copy hashed on the way in, so that
    // a file rewritten meanwhile cannot be published under another file's checksum.
    const digest = new DigestStream();
    await pipeline(createReadStream(source.root), digest, createWriteStream(dest, { flags: 'wx', mode: 0o644 }));
    const digests = digest.digests();
    return { record: { fingerprint: '', sourceDigest: digests.sha256, ...digests } };
  }
  // The plan's walk is reused: a file changed since then fails its package (its size) or is
  // packed as it is now while the fingerprint keeps the old stat, so the next run packs again.
  const { entries, startedMs } = walked ?? await walkSource(source) ?? { entries: [], startedMs: 0 };
  const fingerprint = isRacy(entries, startedMs) ? '' : treeFingerprint(entries, `${FORMAT_SALT}:${options.compression}`);
  const pool = options.threads === 1 && entries.reduce((sum, entry) => sum + entry.size, 0) <= POOLED_MAX_BYTES ? options.pool : undefined;
  const result = await packEntries(entries, dest, options.compression, { threads: options.threads, pool });
  return { record: { fingerprint, sourceDigest: result.sourceDigest, md5: result.md5, sha256: result.sha256, size: result.size } };
}

function isRacy(entries: TreeEntry[], walkStartedMs: number): boolean {
  return entries.some((entry) => Math.max(entry.mtimeMs, entry.ctimeMs) >= walkStartedMs - CLOCK_TICK_MS);
}

/**
 * The source digest of the package as it is now, when that is known to equal the last pack's
 * without packing again: by the fingerprint alone, or, for a tree that changed too close to
 * its last pack to trust its file times, by reading its content once (no compression).
 */
async function currentDigest(source: PackageSource, walked: Walked | undefined, state: PackState, compression: Compression): Promise<string | undefined> {
  if (source.type === 'file' || !walked) return undefined;
  const record = state.get(source.fileName);
  if (!record) return undefined;
  const { entries, startedMs } = walked;
  const fingerprint = treeFingerprint(entries, `${FORMAT_SALT}:${compression}`);
  if (record.fingerprint !== '') return fingerprint === record.fingerprint ? record.sourceDigest : undefined;
  if (await digestEntries(entries) !== record.sourceDigest) return undefined;
  if (!isRacy(entries, startedMs)) state.set(source.fileName, { ...record, fingerprint });
  return record.sourceDigest;
}

/**
 * `packager upload`: packs what changed, in parallel, and publishes it to every location
 * with its index. A location that refuses is reported and the others go on; a package that
 * cannot be packed is reported and the others go on. Nothing is ever half-published.
 */
export function uploadPackages(options: UploadOptions): Promise<OperationReport> {
  return withResources(options.resources, (resources) => uploadWith({ ...options, resources }));
}

async function uploadWith(options: UploadOptions & { resources: Resources }): Promise<OperationReport> {
  const emit: EventSink = options.onEvent ?? (() => undefined);
  // One package per core, each compressed on one thread (see threadsFor): the tar stream is
  // built on the main thread at many times the compressor's speed, so the cores stay busy.
  const cores = availableParallelism();
  const jobs = options.jobs ?? cores;
  const sources = await selectSources(options.clientDir, options.selection, options.compression);
  const state = await openPackState(options.clientDir, options.cacheDir ?? cacheDir());
  const report: OperationReport = { packed: [], failedPackages: [], locations: [], ok: true };

  const live: LiveTarget[] = [];
  await Promise.all(options.locations.map(async (location) => {
    const locationReport = emptyLocationReport(describeLocation(location));
    report.locations.push(locationReport);
    try {
      const target = createUploadTarget(location, { signing: options.signing, resources: options.resources });
      const { created } = await target.prepare({ minimumFreeBytes: options.minimumFreeBytes, neededBytes: 0 });
      locationReport.created = created;
      await target.cleanTemps();
      live.push({ target, report: locationReport, index: await target.readIndex() });
    } catch (error) {
      locationReport.error = toFailure(error);
      emit({ type: 'location-failed', location: locationReport.location, error: locationReport.error.message });
    }
  }));

  const limit = pLimit(jobs);
  const known = new Map<string, string | undefined>();
  // Only the walks of packages known to have changed are kept for packing: holding every
  // entry of an unchanged tree would only feed the garbage collector.
  const walks = new Map<string, Walked>();
  const sizes = new Map<string, number>();
  await Promise.all(sources.map((source) => limit(async () => {
    try {
      const walked = await walkSource(source);
      const digest = await currentDigest(source, walked, state, options.compression);
      known.set(source.fileName, digest);
      if (walked) {
        sizes.set(source.fileName, walked.bytes);
        if (digest === undefined) walks.set(source.fileName, walked);
      }
    } catch {
      known.set(source.fileName, undefined);
    }
  })));

  const toPack: PackageSource[] = [];
  for (const source of sources) {
    const digest = known.get(source.fileName);
    const everywhere = await Promise.all(live.map((l) => holds(l, source.fileName, digest)));
    if (everywhere.every(Boolean)) {
      for (const l of live) {
        l.report.unchanged.push(source.fileName);
        emit({ type: 'unchanged', file: source.fileName, location: l.target.name });
      }
    } else toPack.push(source);
  }
  emit({ type: 'plan', packages: sources.length, toPack: live.length > 0 ? toPack.length : 0, locations: live.length });
  // Largest first, so that the last package to finish is a small one.
  const bytesOf = (source: PackageSource): number => sizes.get(source.fileName) ?? 0;
  toPack.sort((a, b) => bytesOf(b) - bytesOf(a));
  const totalBytes = toPack.reduce((sum, source) => sum + bytesOf(source), 0);
  // A package holding a core's share of the work or more would finish alone: it gets every core.
  const threadsFor = (source: PackageSource): number => (bytesOf(source) * cores >= totalBytes ? cores : 1);

  if (live.length > 0 && toPack.length > 0) {
    const stagingRoot = path.join(options.cacheDir ?? cacheDir(), 'staging');
    await mkdir(stagingRoot, { recursive: true });
    const staging = await mkdtemp(path.join(stagingRoot, 'pack-'));
    const staged = new Map<LiveTarget, { entry: IndexEntry; staged: StagedFile }[]>(live.map((l) => [l, []]));
    const refresh = new Map<LiveTarget, IndexEntry[]>(live.map((l) => [l, []]));
    let pool: CompressorPool | undefined;
    try {
      // Without a compressor on PATH there is no pool: each package then fails saying so, by name.
      if (options.compression !== 'gzip') {
        pool = await createCompressorPool(options.compression, { size: jobs, workDir: staging }).catch((error: unknown) => {
          if (isAutotestError(error, 'ERR_TOOL')) return undefined;
          throw error;
        });
      }
      await Promise.all(toPack.map((source) => limit(async () => {
        const started = process.hrtime.bigint();
        const packed = path.join(staging, source.fileName);
        let record: PackRecord;
        try {
          ({ record } = await packSource(source, walks.get(source.fileName), packed, { compression: options.compression, threads: threadsFor(source), pool }));
        } catch (error) {
          const failure = toFailure(error);
          report.failedPackages.push({ file: source.fileName, ...failure });
          emit({ type: 'package-failed', file: source.fileName, error: failure.message });
          return;
        }
        if (source.type !== 'file') {
          state.set(source.fileName, record);
          report.packed.push(source.fileName);
          emit({ type: 'packed', file: source.fileName, size: record.size, seconds: Number(process.hrtime.bigint() - started) / 1e9 });
        }
        const entry: IndexEntry = {
          file: source.fileName, md5: record.md5, sha256: record.sha256, size: record.size,
          sourceDigest: record.sourceDigest, publishedAt: new Date().toISOString(),
        };
        await Promise.all(live.map(async (l) => {
          if (l.report.error) return;
          const existing = l.index.get(source.fileName);
          const size = existing ? await l.target.fileSize(source.fileName) : undefined;
          if (existing && existing.md5 === record.md5 && (existing.sha256 ?? record.sha256) === record.sha256 && size === record.size) {
            // Same bytes already there (touched files, or an older index): only the index learns more.
            if (existing.sourceDigest !== record.sourceDigest || existing.sha256 === undefined) refresh.get(l)?.push({ ...entry, publishedAt: existing.publishedAt });
            l.report.unchanged.push(source.fileName);
            emit({ type: 'unchanged', file: source.fileName, location: l.target.name });
            return;
          }
          try {
            staged.get(l)?.push({ entry, staged: await l.target.stage(source.fileName, packed) });
          } catch (error) {
            l.report.error ??= toFailure(error);
          }
        }));
        await rm(packed, { force: true });
      })));

      await Promise.all(live.map(async (l) => {
        const adds = staged.get(l) ?? [];
        try {
          if (l.report.error) throw new Error('location failed before commit');
          await l.target.commit({ add: adds, refresh: refresh.get(l) ?? [], remove: [] });
          for (const { entry } of adds) {
            l.report.published.push(entry.file);
            emit({ type: 'published', file: entry.file, location: l.target.name, size: entry.size ?? 0 });
          }
        } catch (error) {
          await l.target.discard(adds.map((a) => a.staged));
          l.report.error ??= toFailure(error);
          emit({ type: 'location-failed', location: l.target.name, error: l.report.error.message });
        }
      }));
    } finally {
      await pool?.close();
      await rm(staging, { recursive: true, force: true });
      await state.save().catch(() => undefined);
    }
  }
  report.ok = report.failedPackages.length === 0 && report.locations.every((l) => !l.error) && report.locations.length > 0;
  return report;
}
