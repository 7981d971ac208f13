import { createReadStream, createWriteStream } from 'node:fs';
import { lstat, mkdir, readdir, rm } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { availableParallelism, uptime } from 'node:os';
import path from 'node:path';
import pLimit from 'p-limit';
import type { Compression, FetchTls, Location } from '../config/index.js';
import { describeLocation } from '../config/index.js';
import { isAutotestError } from '../errors.js';
import {
  DigestStream,
  compressTarFile,
  createCompressorPool,
  digestEntries,
  packEntries,
  treeFingerprint,
  writeTarFile,
  type CompressorPool,
  type IndexEntry,
  type TreeEntry,
  type RepositoryIndex,
} from '../packages/index.js';
import { createUploadTarget, type StagedFile, type UploadTarget } from '../repositories/index.js';
import type { IndexSigning } from '../signing/index.js';
import { packageEntries, selectSources, type PackageSource, type Selection } from './client-tree.js';
import { emptyLocationReport, type EventSink, type LocationReport, type OperationReport } from './events.js';
import { toFailure } from './failure.js';
import { tarTurns, type TarTurns } from './tar-turns.js';
import { cacheDir, openPackState, type PackRecord, type PackState } from './state.js';
import { withResources, type Resources } from '../resources.js';
import { isDeadTemp, isTempName, isThisHostTemp, tempPathFor } from '../fs/atomic.js';

export interface UploadOptions {
  clientDir: string;
  selection: Selection;
  locations: Location[];
  compression: Compression;
  minimumFreeBytes: number;
  /** Compressors run at once (default: the number of cores). */
  jobs?: number;
  onEvent?: EventSink;
  /** Where the pack cache and staging folder live (default: ~/.cache/autotest). */
  cacheDir?: string;
  /** signing_key: every index written is signed. */
  signing?: IndexSigning | undefined;
  /** fetch_ca_file and the client certificate, for an https S3 endpoint. */
  tls?: FetchTls | undefined;
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

/**
 * Packages in flight (walked, their tar written or being written, compressing): one per
 * compressor and TARS_AHEAD more, so that no compressor waits for the main thread to write
 * its next tar; beyond that, while all in flight hold less than AHEAD_BYTES per compressor,
 * up to MAX_IN_FLIGHT, so that packages queue up at the compressor pool and go several to a
 * compressor run (two runs of up to 4 MB held by each compressor's helper). Their tar files
 * are what the staging folder holds at once.
 */
const TARS_AHEAD = 2;
const AHEAD_BYTES = 8 * 1024 * 1024;
const MAX_IN_FLIGHT = 64;

interface PackPlan {
  compression: Compression;
  pool: CompressorPool | undefined;
  /** The compressor threads for a package of this many bytes. */
  threadsFor: (bytes: number) => number;
  /** One tar stream is written at a time (they all run on the main thread): see tarTurns. */
  tarring: TarTurns;
}

async function copyFileSource(source: PackageSource, dest: string): Promise<PackRecord> {
  // Plain files are published as they are, from one copy hashed on the way in, so that
  // a file rewritten meanwhile cannot be published under another file's checksum.
  const digest = new DigestStream();
  await pipeline(createReadStream(source.root), digest, createWriteStream(dest, { flags: 'wx', mode: 0o644 }));
  const digests = digest.digests();
  return { fingerprint: '', sourceDigest: digests.sha256, ...digests };
}

async function packSource(source: PackageSource, walked: Walked | undefined, dest: string, plan: PackPlan): Promise<PackRecord> {
  if (source.type === 'file') return copyFileSource(source, dest);
  // The plan's walk is reused: a file changed since then fails its package (its size) or is
  // packed as it is now while the fingerprint keeps the old stat, so the next run packs again.
  const { entries, startedMs, bytes } = walked ?? (await walkSource(source)) ?? { entries: [], startedMs: 0, bytes: 0 };
  const fingerprint = isRacy(entries, startedMs) ? '' : treeFingerprint(entries, `${FORMAT_SALT}:${plan.compression}`);
  const threads = plan.threadsFor(bytes);
  // zstd always goes through the pool: given a file it writes the file's size into the frame
  // and tunes itself to it, so a package piped to it would get other bytes.
  if (plan.pool && ((threads === 1 && bytes <= POOLED_MAX_BYTES) || plan.compression === 'zstd')) {
    const pool = plan.pool;
    // The compressor names its output after the tar file, then renamed `dest`. The tar file's
    // name starts with a dot, as no package or plain file name does: a plain file published
    // as `test-x.tar` beside the package test-x is staged as that name.
    if (!dest.endsWith(pool.suffix)) throw new Error(`${dest}: a ${plan.compression} package name ends in ${pool.suffix}`);
    const tar = path.join(path.dirname(dest), `.${path.basename(dest, pool.suffix)}`);
    const sourceDigest = await plan.tarring(bytes, () => writeTarFile(entries, tar));
    // About its tar stream's size: the files and a header block each.
    const digests = await compressTarFile(tar, bytes + 512 * entries.length, pool, dest);
    return { fingerprint, sourceDigest, md5: digests.md5, sha256: digests.sha256, size: digests.size };
  }
  const result = await packEntries(entries, dest, plan.compression, { threads });
  return { fingerprint, sourceDigest: result.sourceDigest, md5: result.md5, sha256: result.sha256, size: result.size };
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
  if ((await digestEntries(entries)) !== record.sourceDigest) return undefined;
  if (!isRacy(entries, startedMs)) state.set(source.fileName, { ...record, fingerprint });
  return record.sourceDigest;
}

async function openLocations(options: UploadOptions & { resources: Resources }, report: OperationReport, emit: EventSink): Promise<LiveTarget[]> {
  const live: LiveTarget[] = [];
  await Promise.all(
    options.locations.map(async (location) => {
      const locationReport = emptyLocationReport(describeLocation(location));
      report.locations.push(locationReport);
      try {
        const target = createUploadTarget(location, { signing: options.signing, tls: options.tls, resources: options.resources });
        const { created } = await target.prepare({ minimumFreeBytes: options.minimumFreeBytes, neededBytes: 0 });
        locationReport.created = created;
        await target.cleanTemps();
        live.push({ target, report: locationReport, index: await target.readIndex() });
      } catch (error) {
        locationReport.error = toFailure(error);
        emit({ type: 'location-failed', location: locationReport.location, error: locationReport.error.message, hint: locationReport.error.hint });
      }
    }),
  );
  return live;
}

/**
 * The packages found to need packing, handed out largest first among those known. The walk
 * feeds it while the first packages are already packed: a walk of a few thousand files takes
 * as long as tens of packages' compression, and the cores would wait for it. Only the first
 * packages handed out can miss a larger one not walked yet; the walk is over long before
 * they are, so the largest packages still start early and the last to finish is a small one.
 */
interface PackQueue {
  push(source: PackageSource, walked: Walked | undefined): void;
  /** No more packages: `next` answers undefined once the queue is empty. */
  close(): void;
  next(): Promise<{ source: PackageSource; walked: Walked | undefined } | undefined>;
  /** Bytes of every package pushed so far, and whether the walk is over. */
  readonly totalBytes: number;
  readonly closed: boolean;
  readonly count: number;
}

function createPackQueue(): PackQueue {
  const ready: { source: PackageSource; walked: Walked | undefined }[] = [];
  const waiting: ((item: { source: PackageSource; walked: Walked | undefined } | undefined) => void)[] = [];
  let totalBytes = 0;
  let count = 0;
  let closed = false;
  return {
    push(source, walked) {
      count += 1;
      totalBytes += walked?.bytes ?? 0;
      const item = { source, walked };
      const taker = waiting.shift();
      if (taker) {
        taker(item);
        return;
      }
      const bytes = walked?.bytes ?? 0;
      let at = ready.length;
      while (at > 0 && (ready[at - 1]?.walked?.bytes ?? 0) < bytes) at -= 1;
      ready.splice(at, 0, item);
    },
    close() {
      closed = true;
      for (const taker of waiting.splice(0)) taker(undefined);
    },
    next() {
      const item = ready.shift();
      if (item || closed) return Promise.resolve(item);
      return new Promise((resolve) => {
        waiting.push(resolve);
      });
    },
    get totalBytes() {
      return totalBytes;
    },
    get closed() {
      return closed;
    },
    get count() {
      return count;
    },
  };
}

/**
 * Walks every package, one after the other (the walks are synchronous, see walkTree), and
 * pushes each that some location lacks into `queue`; the others are reported unchanged.
 */
async function decide(
  sources: PackageSource[],
  live: LiveTarget[],
  state: PackState,
  queue: PackQueue,
  context: { compression: Compression; emit: EventSink },
): Promise<void> {
  const { emit } = context;
  // Each location is asked about a package (a stat, a round trip) while the next is walked.
  const checks: Promise<void>[] = [];
  try {
    for (const source of sources) {
      // The walks are synchronous: once a package waits to be packed, the event loop turns
      // between them, so that its staging folder, its tar file and the compressors get going.
      if (queue.count > 0) await new Promise((resolve) => setImmediate(resolve));
      const { walked, digest } = await walkAndDigest(source);
      // The walk of a package known unchanged is dropped at once (packing it for a location
      // that lacks it walks again): held until its check, every entry of the tree would be.
      const checking = check(source, digest === undefined ? walked : undefined, digest);
      // Its failure is awaited below; until then it must not count as unhandled.
      checking.catch(() => undefined);
      checks.push(checking);
    }
    await Promise.all(checks);
  } finally {
    // However the walk ends, the packers waiting for more stop.
    queue.close();
  }
  async function walkAndDigest(source: PackageSource): Promise<{ walked: Walked | undefined; digest: string | undefined }> {
    try {
      const walked = await walkSource(source);
      return { walked, digest: await currentDigest(source, walked, state, context.compression) };
    } catch {
      // Packing it reports what is wrong.
      return { walked: undefined, digest: undefined };
    }
  }
  async function check(source: PackageSource, walked: Walked | undefined, digest: string | undefined): Promise<void> {
    // A location that cannot answer (its tarball cannot be looked at) fails alone, as one
    // that refuses a staged file does: the others go on, and its commit reports it.
    const everywhere = await Promise.all(
      live.map((l) =>
        holds(l, source.fileName, digest).catch((error: unknown) => {
          l.report.error ??= toFailure(error);
          return false;
        }),
      ),
    );
    if (!everywhere.every(Boolean)) {
      queue.push(source, walked);
      return;
    }
    for (const l of live) {
      l.report.unchanged.push(source.fileName);
      emit({ type: 'unchanged', file: source.fileName, location: l.target.name });
    }
  }
}

/** What every location will be asked to commit once all is packed. */
interface Staged {
  adds: Map<LiveTarget, { entry: IndexEntry; staged: StagedFile }[]>;
  refresh: Map<LiveTarget, IndexEntry[]>;
}

/** Stages one packed package into every live location, or only refreshes the index of one already holding its bytes. */
async function stageEverywhere(file: string, packed: string, record: PackRecord, live: LiveTarget[], staged: Staged, emit: EventSink): Promise<void> {
  const entry: IndexEntry = {
    file,
    md5: record.md5,
    sha256: record.sha256,
    size: record.size,
    sourceDigest: record.sourceDigest,
    publishedAt: new Date().toISOString(),
  };
  await Promise.all(
    live.map(async (l) => {
      if (l.report.error) return;
      const existing = l.index.get(file);
      const size = existing ? await l.target.fileSize(file) : undefined;
      if (existing && existing.md5 === record.md5 && (existing.sha256 ?? record.sha256) === record.sha256 && size === record.size) {
        // Same bytes already there (touched files, or an older index): only the index learns more.
        if (existing.sourceDigest !== record.sourceDigest || existing.sha256 === undefined)
          staged.refresh.get(l)?.push({ ...entry, publishedAt: existing.publishedAt });
        l.report.unchanged.push(file);
        emit({ type: 'unchanged', file, location: l.target.name });
        return;
      }
      try {
        staged.adds.get(l)?.push({ entry, staged: await l.target.stage(file, packed) });
      } catch (error) {
        l.report.error ??= toFailure(error);
      }
    }),
  );
}

/** The staging folder and the compressors, made when the first package to pack is found. */
interface Workspace {
  dir: string;
  plan: PackPlan;
}

interface PackContext {
  live: LiveTarget[];
  state: PackState;
  report: OperationReport;
  emit: EventSink;
  workspace: () => Promise<Workspace>;
  staged: Staged;
  /** Settles once the plan event is out, which every packed event follows. */
  planned: Promise<void>;
}

/**
 * Packs every package the queue hands out and stages it into the locations. Three stages
 * overlap: the main thread writes tar streams (one at a time, ahead of the compressors: see
 * TARS_AHEAD), the compressors compress them, and packed packages are hashed and copied to
 * the locations without holding a compressor's turn.
 */
async function packAndStage(queue: PackQueue, compressors: number, context: PackContext): Promise<void> {
  const staging = pLimit(2 * compressors);
  const stages: Promise<void>[] = [];
  const inFlight = new Set<Promise<void>>();
  let bytesInFlight = 0;
  const hasRoom = (): boolean => inFlight.size < compressors + TARS_AHEAD || (inFlight.size < MAX_IN_FLIGHT && bytesInFlight < AHEAD_BYTES * compressors);
  // One package is asked of the queue at a time, and only with room for it: the queue hands
  // out the largest it knows at that moment.
  for (;;) {
    while (!hasRoom()) await Promise.race(inFlight);
    const item = await queue.next();
    if (!item) {
      // Every package left is in flight: the compressors' last runs are shared out evenly.
      if (queue.count > 0) {
        void context.workspace().then(
          (workspace) => workspace.plan.pool?.finishing(),
          () => undefined,
        );
      }
      break;
    }
    const bytes = item.walked?.bytes ?? 0;
    bytesInFlight += bytes;
    const packing: Promise<void> = packOne(item.source, item.walked, context, (stage) => stages.push(staging(stage))).finally(() => {
      bytesInFlight -= bytes;
      inFlight.delete(packing);
    });
    inFlight.add(packing);
  }
  await Promise.all(inFlight);
  await Promise.all(stages);
}

/** Packs one package; once packed, hands its staging (mostly waiting for the disk: a copy and an fsync per location) to `stage`. Never rejects: a failure is reported. */
async function packOne(source: PackageSource, walked: Walked | undefined, context: PackContext, stage: (run: () => Promise<void>) => void): Promise<void> {
  const { report, emit, state } = context;
  const started = process.hrtime.bigint();
  let packed = source.fileName;
  let record: PackRecord;
  try {
    const { dir, plan } = await context.workspace();
    packed = path.join(dir, source.fileName);
    record = await packSource(source, walked, packed, plan);
  } catch (error) {
    const failure = toFailure(error);
    report.failedPackages.push({ file: source.fileName, ...failure });
    emit({ type: 'package-failed', file: source.fileName, error: failure.message, hint: failure.hint });
    return;
  }
  if (source.type !== 'file') state.set(source.fileName, record);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  stage(async () => {
    await context.planned;
    if (source.type !== 'file') {
      report.packed.push(source.fileName);
      emit({ type: 'packed', file: source.fileName, size: record.size, seconds });
    }
    await stageEverywhere(source.fileName, packed, record, context.live, context.staged, emit);
    await rm(packed, { force: true });
  });
}

async function commitEverywhere(live: LiveTarget[], staged: Staged, emit: EventSink): Promise<void> {
  await Promise.all(
    live.map(async (l) => {
      const adds = staged.adds.get(l) ?? [];
      try {
        if (l.report.error) throw new Error('location failed before commit');
        await l.target.commit({ add: adds, refresh: staged.refresh.get(l) ?? [], remove: [] });
        for (const { entry } of adds) {
          l.report.published.push(entry.file);
          emit({ type: 'published', file: entry.file, location: l.target.name, size: entry.size ?? 0 });
        }
      } catch (error) {
        await l.target.discard(adds.map((a) => a.staged));
        l.report.error ??= toFailure(error);
        emit({ type: 'location-failed', location: l.target.name, error: l.report.error.message, hint: l.report.error.hint });
      }
    }),
  );
}

/** Compressors run from long-lived helpers; without a compressor on PATH there is none, and each package then fails saying so, by name. */
async function openPool(compression: Compression, size: number, workDir: string): Promise<CompressorPool | undefined> {
  if (compression === 'gzip') return undefined;
  return createCompressorPool(compression, { size, workDir }).catch((error: unknown) => {
    if (isAutotestError(error, 'ERR_TOOL')) return undefined;
    throw error;
  });
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
  // One compressor per core, each on one thread (see threadsFor): the tar streams are
  // built on the main thread at many times a compressor's speed, so the cores stay busy.
  const cores = availableParallelism();
  const compressors = options.jobs ?? cores;
  const sources = await selectSources(options.clientDir, options.selection, options.compression);
  const state = await openPackState(options.clientDir, options.cacheDir ?? cacheDir());
  const report: OperationReport = { packed: [], failedPackages: [], locations: [], ok: true };
  const live = await openLocations(options, report, emit);
  const queue = createPackQueue();
  if (live.length === 0) {
    await decide(sources, live, state, queue, { compression: options.compression, emit });
    emit({ type: 'plan', packages: sources.length, toPack: 0, locations: 0 });
  } else {
    await packEverything(queue, { ...options, sources, live, state, report, emit, compressors, cores });
  }
  report.ok = report.failedPackages.length === 0 && report.locations.every((l) => !l.error) && report.locations.length > 0;
  return report;
}

interface PackEverything extends UploadOptions {
  sources: PackageSource[];
  live: LiveTarget[];
  state: PackState;
  report: OperationReport;
  emit: EventSink;
  compressors: number;
  cores: number;
}

/** Staging folders of packagers before this naming: `pack-` and six random characters. */
const OLD_STAGING_NAME = /^pack-[A-Za-z0-9]{6}$/;
const OLD_STAGING_MAX_AGE_MS = 24 * 3600 * 1000;

/** How far the clock may have been set back since the boot (NTP stepping it) before a folder is taken for older than the boot. */
const BOOT_CLOCK_SLACK_MS = 10 * 60 * 1000;

/**
 * Removes the staging folders of packagers that died (killed mid-upload, the machine
 * rebooted): those of this host, boot and PID namespace whose process is gone; those named
 * with this host name alone (before runtime ids) last written before the boot, whatever
 * their pid has become since; any other's (other machines on a shared home folder, other
 * containers, earlier boots) and unnamed old ones once untouched for a day. Beside the
 * packing, never failing it.
 */
async function removeDeadStaging(stagingRoot: string): Promise<void> {
  const now = Date.now();
  const bootedAt = now - uptime() * 1000;
  for (const name of await readdir(stagingRoot).catch(() => [])) {
    const temp = isTempName(name);
    if (!temp && !OLD_STAGING_NAME.test(name)) continue;
    try {
      const st = await lstat(path.join(stagingRoot, name));
      const beforeBoot = isThisHostTemp(name) && st.mtimeMs < bootedAt - BOOT_CLOCK_SLACK_MS;
      const dead = temp ? isDeadTemp(name, st.mtimeMs) || beforeBoot : now - st.mtimeMs > OLD_STAGING_MAX_AGE_MS;
      if (dead) await rm(path.join(stagingRoot, name), { recursive: true, force: true });
    } catch {
      // Gone meanwhile (another packager removing it), or one this user may not remove (a
      // cache shared with other users): the next folder all the same.
    }
  }
}

/** Walks, packs and stages at once, then commits to every location. */
async function packEverything(queue: PackQueue, options: PackEverything): Promise<void> {
  const { live, state, emit, cores } = options;
  const staged: Staged = { adds: new Map(live.map((l) => [l, []])), refresh: new Map(live.map((l) => [l, []])) };
  // A package holding a core's share of the work or more would finish alone: it gets every
  // core. Before the walk is over the share is not known: the few packages taken by then get one.
  const threadsFor = (bytes: number): number => (queue.closed && bytes > 0 && bytes * cores >= queue.totalBytes ? cores : 1);
  let opened: Promise<Workspace> | undefined;
  let cleaning: Promise<void> | undefined;
  const workspace = (): Promise<Workspace> => {
    opened ??= (async () => {
      const stagingRoot = path.join(options.cacheDir ?? cacheDir(), 'staging');
      await mkdir(stagingRoot, { recursive: true });
      // Named with host and pid, so that the next packager removes it if this one is killed.
      const dir = tempPathFor(path.join(stagingRoot, 'pack'));
      await mkdir(dir, { mode: 0o700 });
      cleaning = removeDeadStaging(stagingRoot);
      const pool = await openPool(options.compression, options.compressors, dir);
      // No more helpers than packages that may be compressed: a spawn costs the event loop
      // a few ms, and `upload -t one` on a machine of many cores would pay it once a core.
      pool?.start(options.sources.filter((source) => source.type !== 'file').length);
      return { dir, plan: { compression: options.compression, pool, threadsFor, tarring: tarTurns(options.compressors) } };
    })();
    return opened;
  };
  try {
    const deciding = decide(options.sources, live, state, queue, { compression: options.compression, emit }).then(() => {
      emit({ type: 'plan', packages: options.sources.length, toPack: queue.count, locations: live.length });
    });
    await Promise.all([
      deciding,
      packAndStage(queue, options.compressors, { live, state, report: options.report, emit, workspace, staged, planned: deciding }),
    ]);
    if (queue.count > 0) await commitEverywhere(live, staged, emit);
  } finally {
    if (opened) {
      const made = await opened.catch(() => undefined);
      await made?.plan.pool?.close();
      if (made) await rm(made.dir, { recursive: true, force: true });
      await cleaning;
      await state.save().catch(() => undefined);
    }
  }
}
