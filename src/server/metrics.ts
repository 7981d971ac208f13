import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** What /metrics exposes, in one registry per server (tests build several in one process). */
export interface ServerMetrics {
  registry: Registry;
  requests: Counter<'method' | 'route' | 'status'>;
  bytesSent: Counter;
  uploads: Counter<'outcome'>;
  uploadBytes: Counter;
  errors: Counter<'kind'>;
  duration: Histogram<'method' | 'route'>;
  cache: CacheMetrics;
}

/** The caching front (server/cache.ts); by served repository where a ratio per repository is wanted. */
export interface CacheMetrics {
  hits: Counter<'repository'>;
  misses: Counter<'repository'>;
  /** Requests that joined a download already under way instead of starting one. */
  coalesced: Counter<'repository'>;
  upstreamBytes: Counter;
  servedBytes: Counter;
  evictions: Counter;
  /** Bytes of verified entries kept. */
  cacheBytes: Gauge;
  /** Answers given from the last good index while every upstream failed. */
  staleAnswers: Counter<'repository'>;
  /** Upstream copies refused: a checksum or size that is not the index's, or a cut download. */
  rejected: Counter<'reason'>;
  /** Answers streamed from an upstream without being kept, because cache_dir's disk was full. */
  passedThrough: Counter<'repository'>;
  /** 1 while cache_dir's disk is full (answers are streamed through), else 0. */
  diskFull: Gauge;
  /** Index files asked again with If-None-Match after index_max_age, by whether the upstream said unchanged (304). */
  indexRevalidations: Counter<'result'>;
}

export function createMetrics(): ServerMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'autotest_server_' });
  return {
    registry,
    requests: new Counter({
      name: 'autotest_http_requests_total',
      help: 'HTTP requests answered',
      labelNames: ['method', 'route', 'status'],
      registers: [registry],
    }),
    bytesSent: new Counter({ name: 'autotest_http_response_bytes_total', help: 'Bytes of response bodies sent', registers: [registry] }),
    uploads: new Counter({ name: 'autotest_uploads_total', help: 'Uploads of custom packages, by outcome', labelNames: ['outcome'], registers: [registry] }),
    uploadBytes: new Counter({ name: 'autotest_upload_bytes_total', help: 'Bytes of custom packages received', registers: [registry] }),
    errors: new Counter({ name: 'autotest_errors_total', help: 'Requests that failed, by kind', labelNames: ['kind'], registers: [registry] }),
    duration: new Histogram({
      name: 'autotest_http_request_duration_seconds',
      help: 'Time to answer a request',
      labelNames: ['method', 'route'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
      registers: [registry],
    }),
    cache: createCacheMetrics(registry),
  };
}

/** The caching front's counters, in the server's registry. */
function createCacheMetrics(registry: Registry): CacheMetrics {
  return {
    hits: new Counter({
      name: 'autotest_cache_hits_total',
      help: 'Package requests answered from a verified cache entry',
      labelNames: ['repository'],
      registers: [registry],
    }),
    misses: new Counter({
      name: 'autotest_cache_misses_total',
      help: 'Package requests that started an upstream download',
      labelNames: ['repository'],
      registers: [registry],
    }),
    coalesced: new Counter({
      name: 'autotest_cache_coalesced_total',
      help: 'Package requests that joined a download under way',
      labelNames: ['repository'],
      registers: [registry],
    }),
    upstreamBytes: new Counter({ name: 'autotest_cache_upstream_bytes_total', help: 'Bytes fetched from upstreams', registers: [registry] }),
    servedBytes: new Counter({
      name: 'autotest_cache_served_bytes_total',
      help: 'Package bytes sent to clients by the caching front',
      registers: [registry],
    }),
    evictions: new Counter({ name: 'autotest_cache_evictions_total', help: 'Entries removed to stay within cache_size', registers: [registry] }),
    cacheBytes: new Gauge({ name: 'autotest_cache_bytes', help: 'Bytes of verified entries in cache_dir', registers: [registry] }),
    staleAnswers: new Counter({
      name: 'autotest_cache_stale_answers_total',
      help: 'Answers from the last good index while every upstream failed',
      labelNames: ['repository'],
      registers: [registry],
    }),
    rejected: new Counter({
      name: 'autotest_cache_rejected_total',
      help: 'Upstream copies not kept, by reason',
      labelNames: ['reason'],
      registers: [registry],
    }),
    passedThrough: new Counter({
      name: 'autotest_cache_passthrough_total',
      help: 'Package answers streamed from an upstream without being kept (cache_dir full)',
      labelNames: ['repository'],
      registers: [registry],
    }),
    indexRevalidations: new Counter({
      name: 'autotest_cache_index_revalidations_total',
      help: 'Upstream index files asked again with If-None-Match, by result (unchanged: a 304)',
      labelNames: ['result'],
      registers: [registry],
    }),
    diskFull: new Gauge({
      name: 'autotest_cache_disk_full',
      help: '1 while the disk of cache_dir is full and answers are streamed through',
      registers: [registry],
    }),
  };
}
