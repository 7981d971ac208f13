import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage } from 'node:http';
import Fastify, { LogController, type FastifyInstance } from 'fastify';
import { pino, type DestinationStream } from 'pino';
import { describeLocation, flattenFetchLocations, type Config, type Location } from '../config/index.js';
import { isAutotestError, redactSecrets } from '../errors.js';
import { replyError } from './error-answer.js';
import { MAX_FILE_NAME_LENGTH } from '../packages/index.js';
import { cacheDir } from '../packager/index.js';
import { loadIndexSigning } from '../signing/index.js';
import { registerFrontend } from './frontend.js';
import { createMetrics, type ServerMetrics } from './metrics.js';
import type { CacheFront } from './cache.js';
import { createRepositoryHandler, type RepositoryHandler, type ServedRepository } from './repository-handler.js';
import { registerUploads } from './uploads.js';
import { Resources } from '../resources.js';
import { STREAM_BUFFERS } from './stream-buffers.js';

export interface ServerOptions {
  config: Config;
  /** Log level for the structured (pino) request log; 'silent' in tests. */
  logLevel?: string;
  /** Where logs go: stdout by default. */
  logStream?: NodeJS.WritableStream;
  cacheDir?: string;
  /**
   * Connections, stream buffers and the like, shared with whatever else is given the same
   * object; by default the server's own, closed when it closes.
   */
  resources?: Resources;
}

/**
 * Builds the package server without listening (the caller listens and shuts down): the
 * repository folders at /packages/builtin/ and /packages/custom/, custom uploads and deletes,
 * the frontend, /healthz and /metrics.
 */
function carriesBody(request: IncomingMessage): boolean {
  const length = request.headers['content-length'];
  return request.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/** Where a location's files are, whatever way its text was written (a trailing slash, file://). */
function placeOf(location: Location): string {
  if (location.kind === 's3') return `s3 ${location.settings.endpoint ?? ''} ${location.bucket}/${location.prefix}`;
  if (location.kind === 'local') return `local ${location.path}`;
  return describeLocation(location).replace(/\/+$/, '');
}

/** A cached repository that reads one of `locations` forgets its index: the server's own publish shows at once. */
function invalidateCachedViews(repositories: ServedRepository[], locations: Location[]): void {
  const changed = new Set(locations.map(placeOf));
  for (const repository of repositories) {
    if (!('cached' in repository)) continue;
    if (flattenFetchLocations(repository.location.upstreams).some((upstream) => changed.has(placeOf(upstream)))) repository.cached.invalidate();
  }
}

/**
 * The Fastify instance on its own HTTP server: repository files answered by `files` before
 * Fastify's router, timeouts set, one JSON access line per request to `logStream`.
 */
function createApp(options: ServerOptions, files: { handler?: RepositoryHandler }, logStream: DestinationStream | undefined): FastifyInstance {
  return Fastify({
    serverFactory: (handler) => {
      const server = createServer((request, response) => {
        // A request with a body closes its connection once answered. An answer that leaves the
        // body unread (no route takes one, a 404 or 414, an upload refused before its body)
        // would otherwise make Node read the rest to keep the connection, however long a
        // stranger makes it; uploads, the one route that takes a body, are rare and large.
        if (carriesBody(request)) response.shouldKeepAlive = false;
        if (!files.handler?.handle(request, response)) handler(request, response);
      });
      // With its own server Fastify sets no timeouts: a client that stops reading is cut
      // after a minute of silence, an idle keep-alive connection after 5 s.
      server.setTimeout(60_000, (socket) => {
        socket.destroy();
      });
      server.keepAliveTimeout = 5000;
      server.headersTimeout = 30_000;
      server.requestTimeout = 0;
      return server;
    },
    logger: {
      level: options.logLevel ?? 'info',
      // The token travels only in this header; it never reaches a log line.
      redact: ['req.headers.authorization'],
      // Written synchronously, so that under load a log to a slow pipe cannot queue in memory,
      // in batches of 8 KB (as nginx's buffered access log) flushed at least every second.
      stream: logStream,
    },
    genReqId: (request) => {
      const given = request.headers['x-request-id'];
      return typeof given === 'string' && /^[\w.-]{1,64}$/.test(given) ? given : randomUUID();
    },
    // Idle keep-alive connections close at shutdown; running downloads finish first.
    forceCloseConnections: 'idle',
    // Every file name the index can hold fits in /api/custom/:file, even percent-encoded whole.
    routerOptions: { maxParamLength: MAX_FILE_NAME_LENGTH * 3 },
    // One access line per request (onResponse below) instead of Fastify's two.
    logController: new LogController({ disableRequestLogging: true }),
    return503OnClosing: true,
  });
}

/** The request id header, the access line and the request metrics of every Fastify route. */
function addAccessHooks(app: FastifyInstance, metrics: ServerMetrics): void {
  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id);
  });
  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    metrics.requests.inc({ method: request.method, route, status: reply.statusCode.toString() });
    metrics.duration.observe({ method: request.method, route }, reply.elapsedTime / 1000);
    const length = Number(reply.getHeader('content-length') ?? 0);
    if (request.method !== 'HEAD' && Number.isFinite(length)) metrics.bytesSent.inc(length);
    request.log.info(
      { req: { method: request.method, url: request.url }, res: { statusCode: reply.statusCode }, responseTime: reply.elapsedTime },
      'request completed',
    );
    if (reply.statusCode >= 500) metrics.errors.inc({ kind: 'server' });
    else if (reply.statusCode >= 400) metrics.errors.inc({ kind: reply.statusCode === 404 ? 'not_found' : 'client' });
  });
}

/**
 * Every route's failures: an AutotestError with the status ERROR_CODES gives its code;
 * Fastify's own errors (a malformed request) with theirs; anything else is a 500 whose
 * detail goes to the log only.
 */
function addErrorHandler(app: FastifyInstance): void {
  app.setErrorHandler(async (error, request, reply) => {
    if (isAutotestError(error)) return replyError(reply, error);
    const message = redactSecrets(error instanceof Error ? error.message : String(error));
    const status = (error as { statusCode?: number }).statusCode ?? 500;
    // send's errors carry headers that belong to the answer, such as a 416's Content-Range.
    const headers = (error as { headers?: Record<string, string> }).headers;
    if (headers) void reply.headers(headers);
    if (status >= 500) request.log.error({ err: { message } }, 'request failed');
    return reply
      .code(status)
      .send({ error: status >= 500 ? 'ERR_SERVER' : 'ERR_BAD_REQUEST', message: status >= 500 ? 'internal error; see the server log' : message });
  });
}

/**
 * The served folders: a local folder or S3 prefix as it is, upstreams through one caching
 * front shared by both (loaded only when one is configured).
 */
async function servedRepositories(
  options: ServerOptions,
  app: FastifyInstance,
  metrics: ServerMetrics,
  resources: Resources,
): Promise<{ repositories: ServedRepository[]; front: CacheFront | undefined }> {
  const { packages, server } = options.config;
  const repositories: ServedRepository[] = [];
  let front: CacheFront | undefined;
  for (const [name, location] of [
    ['builtin', server.builtin],
    ['custom', server.custom],
  ] as const) {
    if (!location) continue;
    if (location.kind !== 'cached') {
      repositories.push({ name, location });
      continue;
    }
    // One store for every served folder: a package both list is kept (and fetched) once.
    // Loaded only for a caching front: a plain server starts with few modules (and descriptors).
    const [{ createCacheFront }, { openCacheStore }] = await Promise.all([import('./cache.js'), import('./cache-store.js')]);
    front ??= createCacheFront({
      store: await openCacheStore({ dir: server.cache.dir, sizeBytes: server.cache.sizeBytes, metrics: metrics.cache, log: app.log }),
      settings: packages.fetch,
      metrics: metrics.cache,
      log: app.log,
      resources,
    });
    repositories.push({ name, location, cached: front.repository(name, location.upstreams, server.cache.indexMaxAgeMs) });
  }
  return { repositories, front };
}

/** What the server closes when it stops: downloads first, then the front, the log, and its resources when they are its own. */
function addCloseHooks(
  app: FastifyInstance,
  owned: {
    repositoryHandler: RepositoryHandler;
    front: CacheFront | undefined;
    logDestination: { flushSync(): void } | undefined;
    resources: Resources | undefined;
  },
): void {
  app.addHook('preClose', (done) => {
    owned.repositoryHandler.closing();
    done();
  });
  app.addHook('onClose', (_instance, done) => {
    owned.repositoryHandler.close();
    owned.front?.close();
    owned.logDestination?.flushSync();
    if (!owned.resources) {
      done();
      return;
    }
    owned.resources.close().then(
      () => {
        done();
      },
      (error: unknown) => {
        done(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}

export async function buildServer(options: ServerOptions): Promise<FastifyInstance> {
  const { packages, server } = options.config;
  const resources = options.resources ?? new Resources();
  const logDestination = options.logStream ? undefined : pino.destination({ dest: 1, sync: true, minLength: 8192, periodicFlush: 1000 });
  // Repository files are answered before Fastify's router (see repository-handler.ts); the rest goes to Fastify.
  const files: { handler?: RepositoryHandler } = {};
  const app = createApp(options, files, options.logStream ?? logDestination);
  const metrics = createMetrics();
  addAccessHooks(app, metrics);
  addErrorHandler(app);

  const { repositories, front } = await servedRepositories(options, app, metrics, resources);
  const repositoryHandler = await createRepositoryHandler(repositories, metrics, app.log, resources.get(STREAM_BUFFERS));
  files.handler = repositoryHandler;
  addCloseHooks(app, { repositoryHandler, front, logDestination, resources: options.resources ? undefined : resources });
  registerUploads(
    app,
    {
      token: server.uploadToken,
      maxUploadBytes: server.maxUploadBytes,
      stagingDir: packages.customDownloadLocation,
      maxUploadEntries: server.maxUploadEntries,
      maxUploadExpandedBytes: server.maxUploadExpandedBytes,
      maxConcurrentUploads: server.maxConcurrentUploads,
      minRate: server.uploadMinRate,
      locations: packages.customUploadLocations,
      compression: packages.compression,
      minimumFreeBytes: packages.minimumFreeSpaceBytes,
      cacheDir: options.cacheDir ?? cacheDir(),
      // The server signs what it publishes with the signing_key of its own config.
      signing: await loadIndexSigning(packages),
      tls: packages.fetch.tls,
      published: (locations) => {
        invalidateCachedViews(repositories, locations);
      },
      resources,
    },
    metrics,
  );
  registerFrontend(app, {
    repositories,
    checkedLocations: [...packages.uploadLocations, ...packages.customUploadLocations],
    compression: packages.compression,
    minimumFreeBytes: packages.minimumFreeSpaceBytes,
    uploadsEnabled: server.uploadToken !== undefined,
    token: server.uploadToken,
    traffic: front && (() => front.traffic()),
    tls: packages.fetch.tls,
    resources,
  });
  app.get('/healthz', () => ({ status: 'ok' }));
  app.get('/metrics', async (_request, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()));
  return app;
}
