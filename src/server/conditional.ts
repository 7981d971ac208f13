import type { IncomingHttpHeaders } from 'node:http';
import fresh from 'fresh';

/**
 * Whether the client's copy is current (If-None-Match, If-Modified-Since), as the origin
 * decides it (RFC 9110 §13.2). The client's Cache-Control is left out: `no-cache` asks caches
 * on the way to revalidate, which is what a conditional request does, and fetch() adds it to
 * every conditional request it sends; the `fresh` package would answer such a request 200.
 */
export function isFresh(headers: IncomingHttpHeaders, validators: { etag: string; 'last-modified'?: string }): boolean {
  return fresh({ ...headers, 'cache-control': undefined }, validators);
}
