import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import type { FastifyBaseLogger } from 'fastify';
import { describeLocation, flattenFetchLocations, type FetchLocation, type Location } from '../config/index.js';
import { describeError } from '../errors.js';
import { FetchFailure, type RepositoryHealth } from '../fetch/index.js';
import { writeFileAtomic } from '../fs/atomic.js';
import { CHECKSUM_FILE, MANIFEST_FILE, parseChecksumFile, readIndexFiles, type RepositoryIndex } from '../packages/index.js';
import { readIndexBody, type FetchRepository } from '../repositories/index.js';
import { UpstreamFailures } from './cache-failures.js';
import { PackageSources } from './cache-sources.js';
import type { CacheMetrics } from './metrics.js';

/**
 * The index files a front passes through as the upstream has them (byte for byte, so that a
 * signature over them still holds); every other file it serves is a package of the index.
 */
export const INDEX_FILES: readonly string[] = [CHECKSUM_FILE, MANIFEST_FILE, 'packages.json.sig'];

/** An index file as the upstream has it; `etag` is the upstream's, to revalidate it with. */
export interface IndexFile {
  body: Buffer;
  tag: string;
  etag?: string | undefined;
}

/** The index a served repository answers from, and where and when it was read. */
export interface IndexState {
  files: Map<string, IndexFile>;
  index: RepositoryIndex;
  source: Location;
  /** Epoch ms of the read (0: to be read again at the next request). */
  readAt: number;
  /** Every upstream failed at the last try: this is the last good index. */
  stale: boolean;
}

/** The index to serve (undefined: none, not even a kept one), and what every upstream said when none answered. */
export interface IndexRead {
  state: IndexState | undefined;
  failure: UpstreamFailures;
}

/** What the upstream index of a served repository is read with. */
export interface UpstreamIndexContext {
  repositoryFor: (location: Location) => FetchRepository;
  /** The cool-downs shared with the package downloads of the front. */
  health: Promise<RepositoryHealth>;
  /** Epoch ms: the clock index_max_age is measured on. */
  now: () => number;
  timeoutMs: number;
  metrics: CacheMetrics;
  log: FastifyBaseLogger;
  /** Where the last good index is kept for an outage that outlives the server. */
  keptDir: string;
}

function bodyTag(body: Buffer): string {
  return `"i-${createHash('sha256').update(body).digest('hex').slice(0, 32)}"`;
}

function indexOf(files: Map<string, { body: Buffer }>, where: string): RepositoryIndex {
  const checksums = files.get(CHECKSUM_FILE);
  if (!checksums) throw new FetchFailure(`${where}: has no ${CHECKSUM_FILE}`, { transient: false, down: false });
  return readIndexFiles(
    parseChecksumFile(checksums.body.toString('utf8'), `${where}/${CHECKSUM_FILE}`),
    files.get(MANIFEST_FILE)?.body.toString('utf8'),
    (file) => `${where}/${file}`,
  ).index;
}

/**
 * The index files of `upstream`; those of `previous` (read from it before) revalidated with
 * their ETags where the scheme has them, so an unchanged index costs a 304 per file.
 */
async function readUpstreamIndex(
  upstream: FetchRepository,
  previous: Map<string, IndexFile> | undefined,
  context: UpstreamIndexContext,
): Promise<{ files: Map<string, IndexFile>; unchanged: boolean }> {
  const files = new Map<string, IndexFile>();
  let unchanged = previous !== undefined;
  await Promise.all(
    INDEX_FILES.map(async (file) => {
      const before = previous?.get(file);
      try {
        if (upstream.readIfChanged) {
          const answer = await upstream.readIfChanged(file, before?.etag, context.timeoutMs);
          if (before?.etag !== undefined) context.metrics.indexRevalidations.inc({ result: answer.unchanged ? 'unchanged' : 'changed' });
          if (answer.unchanged && before) {
            files.set(file, before);
            return;
          }
          unchanged = false;
          if (answer.unchanged)
            throw new FetchFailure(`${upstream.name}/${file}: answered 304 to a request that had no ETag`, { transient: false, down: false });
          const body = await readIndexBody(answer.stream, `${upstream.name}/${file}`);
          files.set(file, { body, tag: bodyTag(body), etag: answer.etag });
          return;
        }
        const opened = await upstream.open(file, 0, context.timeoutMs);
        const body = await readIndexBody(opened.stream, `${upstream.name}/${file}`);
        if (!before?.body.equals(body)) unchanged = false;
        files.set(file, { body, tag: bodyTag(body) });
      } catch (error) {
        if (error instanceof FetchFailure && error.notFound && file !== CHECKSUM_FILE) {
          if (before) unchanged = false;
          return;
        }
        throw error;
      }
    }),
  );
  return { files, unchanged };
}

/** `files` as read, without the ETags to revalidate them with. */
function withoutEtags(files: Map<string, IndexFile> | undefined): Map<string, IndexFile> | undefined {
  return files && new Map([...files].map(([name, file]) => [name, { ...file, etag: undefined }]));
}

/** The last good index written by an earlier run, for an outage that starts before any upstream answered. */
async function loadKeptIndex(dir: string, upstreams: readonly FetchLocation[]): Promise<IndexState | undefined> {
  try {
    const files = new Map<string, IndexFile>();
    for (const file of await readdir(dir)) {
      if (!INDEX_FILES.includes(file)) continue;
      const body = await readFile(path.join(dir, file));
      files.set(file, { body, tag: bodyTag(body) });
    }
    const [source] = flattenFetchLocations(upstreams);
    if (!source) return undefined;
    return { files, index: indexOf(files, dir), source, readAt: 0, stale: true };
  } catch {
    return undefined;
  }
}

async function keepIndex(dir: string, files: Map<string, { body: Buffer }>): Promise<void> {
  await mkdir(dir, { recursive: true });
  // packages.checksum last: a kept index is read from it, so it never names what the others lack.
  for (const file of [...INDEX_FILES].reverse()) {
    const kept = files.get(file);
    if (kept) await writeFileAtomic(path.join(dir, file), kept.body);
    else await rm(path.join(dir, file), { force: true });
  }
}

/**
 * The upstream index of one served repository: read from the first upstream that answers
 * (skipping those in cool-down), reused until index_max_age has passed, then revalidated;
 * during an outage the last good one, marked stale, tried again once per index_max_age.
 * Concurrent requests share one read.
 */
export class UpstreamIndex {
  /** Which upstreams may give each package of the index served. */
  readonly sources: PackageSources;
  private state: IndexState | undefined;
  /** Epoch ms the last read ended: a stale index is tried again index_max_age after it. */
  private lastTryAt = 0;
  /** Grows at each invalidate(): a read begun before it may hold the index as it was before the publish. */
  private generation = 0;
  private refreshing: { generation: number; result: Promise<IndexRead> } | undefined;
  /** The generation of the read that set `state`: an older read ending later never replaces it. */
  private stateGeneration = -1;
  private keptLoaded = false;

  constructor(
    private readonly name: string,
    private readonly upstreams: readonly FetchLocation[],
    private readonly maxAgeMs: number,
    private readonly context: UpstreamIndexContext,
  ) {
    this.sources = new PackageSources(upstreams, context.repositoryFor);
  }

  /** The index served now, without reading one (undefined: none read yet). */
  get served(): IndexState | undefined {
    return this.state;
  }

  /** The index to answer with: the one held while younger than index_max_age, else read again. */
  current(): Promise<IndexRead> {
    const { state } = this;
    if (state && this.context.now() - (state.stale ? this.lastTryAt : state.readAt) < this.maxAgeMs)
      return Promise.resolve({ state, failure: new UpstreamFailures() });
    let refreshing = this.refreshing;
    if (refreshing?.generation !== this.generation) {
      const started = { generation: this.generation, result: this.refresh() };
      refreshing = this.refreshing = started;
      void started.result.finally(() => {
        this.lastTryAt = this.context.now();
        if (this.refreshing === started) this.refreshing = undefined;
        // Read before an invalidate(): good enough to answer with, to be read again next time.
        if (started.generation !== this.generation && this.state) this.state.readAt = 0;
      });
    }
    return refreshing.result;
  }

  /** Forgets the age of the index held: the next request reads it again. */
  invalidate(): void {
    this.generation += 1;
    if (this.state) this.state.readAt = 0;
    this.lastTryAt = 0;
  }

  private async refresh(): Promise<IndexRead> {
    const health = await this.context.health;
    const generation = this.generation;
    const failures = new UpstreamFailures();
    let empty: Location | undefined;
    for (const location of flattenFetchLocations(this.upstreams)) {
      const label = describeLocation(location);
      if (health.coolingDown(label) > 0) {
        failures.skipped(label, health.lastFailure(label));
        continue;
      }
      try {
        const state = await this.readFrom(location, generation);
        await health.succeeded(label);
        return { state, failure: failures };
      } catch (error) {
        failures.add(error);
        if (error instanceof FetchFailure && error.notFound) empty ??= location;
        if (error instanceof FetchFailure && error.down) await health.failed(label, describeError(error));
      }
    }
    // An upstream answered that it has no index (a new S3 prefix, a custom location nobody
    // published to yet): an empty repository, not an outage. Only when no upstream has one.
    if (empty) return { state: this.adoptEmpty(empty, generation), failure: failures };
    return { state: await this.lastGood(failures), failure: failures };
  }

  /** The index of the upstream at `location`, held from now on unless a read of a later generation already set one. */
  private async readFrom(location: Location, generation: number): Promise<IndexState> {
    const label = describeLocation(location);
    const previous = this.state !== undefined && describeLocation(this.state.source) === label ? this.state : undefined;
    // After an invalidate() (a publish through this server) an ETag is not to be trusted: nginx's
    // is the file's mtime in seconds and its size, the same for an index rewritten within that
    // second at the same size. Such a read takes the files whole.
    const trustEtags = generation <= this.stateGeneration;
    const before = trustEtags ? previous?.files : withoutEtags(previous?.files);
    const { files, unchanged } = await readUpstreamIndex(this.context.repositoryFor(location), before, this.context);
    const unchangedIndex = unchanged ? previous?.index : undefined;
    const index = unchangedIndex ?? indexOf(files, label);
    if (generation < this.stateGeneration && this.state) return this.state;
    this.stateGeneration = generation;
    if (this.state?.stale) this.context.log.info({ repository: this.name, upstream: label }, 'an upstream answered again; the index is fresh');
    this.state = { files, index, source: location, readAt: this.context.now(), stale: false };
    if (!unchangedIndex) {
      this.sources.clear();
      await keepIndex(this.context.keptDir, files).catch((error: unknown) => {
        this.context.log.warn({ err: { message: describeError(error) } }, 'cannot keep the upstream index in cache_dir');
      });
    }
    return this.state;
  }

  private adoptEmpty(source: Location, generation: number): IndexState | undefined {
    if (generation >= this.stateGeneration) {
      this.stateGeneration = generation;
      this.state = { files: new Map(), index: new Map(), source, readAt: this.context.now(), stale: false };
      this.sources.clear();
    }
    return this.state;
  }

  /** The index held (or, after a restart, the one kept in cache_dir), marked stale: no upstream answered. */
  private async lastGood(failures: UpstreamFailures): Promise<IndexState | undefined> {
    if (!this.state && !this.keptLoaded) {
      this.keptLoaded = true;
      this.state = await loadKeptIndex(this.context.keptDir, this.upstreams);
    }
    if (this.state && !this.state.stale)
      this.context.log.warn({ repository: this.name, failures: failures.messages }, 'every upstream failed; serving the last good index and cached packages');
    if (this.state) this.state.stale = true;
    return this.state;
  }
}
