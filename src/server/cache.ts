import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FastifyBaseLogger } from 'fastify';
import type { FetchLocation, FetchSettings, Location } from '../config/index.js';
import { clockFrom } from '../fetch/clock.js';
import { RepositoryHealth } from '../fetch/index.js';
import type { RepositoryIndex } from '../packages/index.js';
import { fetchRepositoryFor, type FetchRepository } from '../repositories/index.js';
import type { Resources } from '../resources.js';
import { answerFromDownload, answerIndexFile, type AnswerContext, type CacheAnswer } from './cache-answers.js';
import { UpstreamDownloads } from './cache-downloads.js';
import { INDEX_FILES, UpstreamIndex, type IndexState, type UpstreamIndexContext } from './cache-index.js';
import { entryKey, type CacheStore } from './cache-store.js';
import { TrafficStatistics, type TrafficSample } from './cache-traffic.js';
import { isFresh } from './conditional.js';
import { answerError } from './error-answer.js';
import type { CacheMetrics } from './metrics.js';

export type { CacheAnswer } from './cache-answers.js';
export { INDEX_FILES } from './cache-index.js';
export type { TrafficSample } from './cache-traffic.js';

export const STALE_HEADERS: Readonly<Record<string, string>> = { 'x-autotest-stale': '1', warning: '110 - "Response is Stale"' };

export interface CachedRepository {
  name: string;
  answer(request: IncomingMessage, response: ServerResponse, file: string, contentType: string): Promise<CacheAnswer>;
  /** The index served now (the last good one during an outage). */
  readIndex(): Promise<RepositoryIndex>;
  /** What a listing shows: the indexed packages and the index files the upstream has. */
  files(): Promise<string[]>;
  /** What the frontend shows of this repository's cache. */
  stats(): CacheStats;
  /**
   * Forgets the index read so far: the next request reads it again. Called when this server
   * has just published to an upstream, so that its own change shows at once.
   */
  invalidate(): void;
}

/** Package answers of one served repository since start, and what of its index is cached. */
export interface CacheStats {
  hits: number;
  misses: number;
  coalesced: number;
  passedThrough: number;
  /** Cached entries of the packages its index names, and their bytes. */
  entries: number;
  bytes: number;
  /** The last good index is served: every upstream failed at the last try. */
  stale: boolean;
}

export interface CacheFront {
  repository(name: string, upstreams: FetchLocation[], indexMaxAgeMs: number): CachedRepository;
  store: CacheStore;
  /** A sample a minute over the last hour (and the one before it, the baseline), then one taken now. */
  traffic(): Promise<TrafficSample[]>;
  /** Cuts every upstream download under way (their waiting answers end incomplete). */
  close(): void;
}

export interface CacheFrontOptions {
  store: CacheStore;
  settings: FetchSettings;
  metrics: CacheMetrics;
  log: FastifyBaseLogger;
  /** The server's connections to the upstreams. */
  resources: Resources;
  /** The read side of each upstream: fetchRepositoryFor over `resources` by default. */
  repositoryFor?: ((location: Location) => FetchRepository) | undefined;
  /** Epoch ms: the clock index_max_age, cool-downs and traffic samples are measured on. */
  now?: (() => number) | undefined;
  /** The pause between tries of an upstream download (ended early when the front closes). */
  sleep?: ((ms: number, signal?: AbortSignal) => Promise<void>) | undefined;
  /** Spreads those pauses. */
  random?: (() => number) | undefined;
}

type Counts = Pick<CacheStats, 'hits' | 'misses' | 'coalesced' | 'passedThrough'>;

/** What every served repository of a front shares. */
interface FrontParts {
  store: CacheStore;
  settings: FetchSettings;
  metrics: CacheMetrics;
  downloads: UpstreamDownloads;
  indexContext: Omit<UpstreamIndexContext, 'keptDir'>;
}

/** One served repository of the front: its upstream index, and its answers from the store or a download. */
class CachedUpstreamRepository implements CachedRepository {
  private readonly upstreamIndex: UpstreamIndex;
  private readonly counts: Counts = { hits: 0, misses: 0, coalesced: 0, passedThrough: 0 };

  constructor(
    readonly name: string,
    upstreams: FetchLocation[],
    indexMaxAgeMs: number,
    private readonly parts: FrontParts,
  ) {
    this.upstreamIndex = new UpstreamIndex(name, upstreams, indexMaxAgeMs, { ...parts.indexContext, keptDir: parts.store.indexDir(name) });
  }

  stats(): CacheStats {
    let entries = 0;
    let bytes = 0;
    const served = this.upstreamIndex.served;
    for (const entry of served?.index.values() ?? []) {
      const size = this.parts.store.sizeOf(entryKey(entry));
      if (size === undefined) continue;
      entries += 1;
      bytes += size;
    }
    return { ...this.counts, entries, bytes, stale: served?.stale ?? false };
  }

  invalidate(): void {
    this.upstreamIndex.invalidate();
  }

  async readIndex(): Promise<RepositoryIndex> {
    return (await this.served()).index;
  }

  async files(): Promise<string[]> {
    const served = await this.served();
    return [...served.index.keys(), ...served.files.keys()];
  }

  async answer(request: IncomingMessage, response: ServerResponse, file: string, contentType: string): Promise<CacheAnswer> {
    const { state, failure } = await this.upstreamIndex.current();
    if (!state) {
      const answered = failure.error(`/packages/${this.name}/${file}: no upstream answered and no index is kept`);
      return { kind: 'answered', bytes: answerError(response, answered.code, answered.message) };
    }
    if (state.stale) {
      this.parts.metrics.staleAnswers.inc({ repository: this.name });
      for (const [header, value] of Object.entries(STALE_HEADERS)) response.setHeader(header, value);
    }
    const base = { 'content-type': contentType, 'x-content-type-options': 'nosniff' };
    if (INDEX_FILES.includes(file)) return { kind: 'answered', bytes: answerIndexFile(request, response, state.files.get(file), file, base) };
    return this.answerPackage(request, response, state, file, base);
  }

  private async served(): Promise<IndexState> {
    const { state, failure } = await this.upstreamIndex.current();
    if (!state) throw failure.error(`/packages/${this.name}/: no upstream answered`);
    return state;
  }

  /** A package of the index: from its store entry, else from the download under way (joined or started). */
  private async answerPackage(
    request: IncomingMessage,
    response: ServerResponse,
    state: IndexState,
    file: string,
    base: Record<string, string>,
  ): Promise<CacheAnswer> {
    const { store, downloads } = this.parts;
    const entry = state.index.get(file);
    if (!entry) return { kind: 'answered', bytes: answerError(response, 'ERR_NOT_FOUND', `${file}: not in this repository`) };
    const key = entryKey(entry);
    const tag = `"${key}"`;
    const hit = store.acquire(key);
    if (hit) {
      this.count('hits', response);
      return { kind: 'entry', path: hit.path, tag, stale: state.stale, release: hit.release };
    }
    const headers = { ...base, etag: tag, 'accept-ranges': 'bytes' };
    if (isFresh(request.headers, { etag: tag })) {
      response.writeHead(304, headers);
      response.end();
      return { kind: 'answered', bytes: 0 };
    }
    let download = downloads.get(key);
    if (download) this.count('coalesced', response);
    else {
      if (request.method === 'HEAD') {
        response.writeHead(200, { ...headers, ...(entry.size === undefined ? {} : { 'content-length': entry.size.toString() }) });
        response.end();
        return { kind: 'answered', bytes: 0 };
      }
      this.count('misses', response);
      const { sources } = this.upstreamIndex;
      download = downloads.start(
        file,
        entry,
        () => sources.candidatesFor(state.source, file, entry),
        (upstream) => {
          sources.passOver(key, upstream);
        },
      );
    }
    return answerFromDownload(download, request, response, headers, this.answerContext());
  }

  /** Counts a package answer in the metrics and the stats, and says which it was in x-autotest-cache. */
  private count(kind: 'hits' | 'misses' | 'coalesced', response: ServerResponse): void {
    this.parts.metrics[kind].inc({ repository: this.name });
    this.counts[kind] += 1;
    response.setHeader('x-autotest-cache', { hits: 'hit', misses: 'miss', coalesced: 'coalesced' }[kind]);
  }

  private answerContext(): AnswerContext {
    const { store, settings, metrics } = this.parts;
    return {
      store,
      settings,
      metrics,
      repository: this.name,
      countPassedThrough: () => {
        this.counts.passedThrough += 1;
      },
    };
  }
}

/**
 * The caching front: served repositories that answer from one store of verified packages,
 * each package fetched once from the upstreams however many clients ask for it at once.
 * Its upstreams, clock and chance come from its options, so it is tested without servers.
 */
class CachingFront implements CacheFront {
  readonly store: CacheStore;
  private readonly parts: FrontParts;
  private readonly trafficStatistics: TrafficStatistics;

  constructor(options: CacheFrontOptions) {
    const { store, settings, metrics, log, resources } = options;
    const clock = clockFrom(options);
    const repositoryFor = options.repositoryFor ?? ((location: Location) => fetchRepositoryFor(location, settings, resources));
    // Kept in memory: the front's cool-downs are its own, not those of the installs on its machine.
    const health = RepositoryHealth.open(settings.cooldownMs, undefined, clock.now);
    this.store = store;
    this.parts = {
      store,
      settings,
      metrics,
      downloads: new UpstreamDownloads({ store, settings, metrics, log, health, clock }),
      indexContext: { repositoryFor, health, now: clock.now, timeoutMs: settings.timeoutMs, metrics, log },
    };
    this.trafficStatistics = new TrafficStatistics(metrics, clock.now);
  }

  repository(name: string, upstreams: FetchLocation[], indexMaxAgeMs: number): CachedRepository {
    return new CachedUpstreamRepository(name, upstreams, indexMaxAgeMs, this.parts);
  }

  traffic(): Promise<TrafficSample[]> {
    return this.trafficStatistics.withNow();
  }

  close(): void {
    this.trafficStatistics.stop();
    this.parts.downloads.close();
  }
}

export function createCacheFront(options: CacheFrontOptions): CacheFront {
  return new CachingFront(options);
}
