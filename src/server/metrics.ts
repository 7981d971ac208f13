import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** What /metrics exposes, in one registry per server (tests build several in one process). */
export interface ServerMetrics {
  registry: Registry;
  requests: Counter<'method' | 'route' | 'status'>;
  bytesSent: Counter;
  uploads: Counter<'outcome'>;
  uploadBytes: Counter;
  errors: Counter<'kind'>;
  duration: Histogram<'method' | 'route'>;
}

export function createMetrics(): ServerMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'autotest_server_' });
  return {
    registry,
    requests: new Counter({ name: 'autotest_http_requests_total', help: 'HTTP requests answered', labelNames: ['method', 'route', 'status'], registers: [registry] }),
    bytesSent: new Counter({ name: 'autotest_http_response_bytes_total', help: 'Bytes of response bodies sent', registers: [registry] }),
    uploads: new Counter({ name: 'autotest_uploads_total', help: 'Uploads of custom packages, by outcome', labelNames: ['outcome'], registers: [registry] }),
    uploadBytes: new Counter({ name: 'autotest_upload_bytes_total', help: 'Bytes of custom packages received', registers: [registry] }),
    errors: new Counter({ name: 'autotest_errors_total', help: 'Requests that failed, by kind', labelNames: ['kind'], registers: [registry] }),
    duration: new Histogram({
      name: 'autotest_http_request_duration_seconds', help: 'Time to answer a request', labelNames: ['method', 'route'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30], registers: [registry],
    }),
  };
}
