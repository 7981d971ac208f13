import { mkdir } from 'node:fs/promises';
import fastifyStatic, { type ListDir, type ListFile } from '@fastify/static';
import type { FastifyInstance } from 'fastify';
import { escapeHtml } from './html.js';

export interface ServedRepository {
  /** URL path segment: builtin or custom. */
  name: 'builtin' | 'custom';
  dir: string;
}

function listing(prefix: string) {
  return (dirs: ListDir[], files: ListFile[]): string => {
    const rows = [...dirs.map((d) => `${d.name}/`), ...files.map((f) => f.name)]
      .map((name) => `<li><a href="${escapeHtml(encodeURIComponent(name.replace(/\/$/, '')))}${name.endsWith('/') ? '/' : ''}">${escapeHtml(name)}</a></li>`)
      .join('\n');
    return `<!doctype html><html><head><meta charset="utf-8"><title>Index of ${escapeHtml(prefix)}</title></head>`
      + `<body><h1>Index of ${escapeHtml(prefix)}</h1><ul>\n${rows}\n</ul></body></html>`;
  };
}

/**
 * Serves each repository folder at /packages/NAME/ as Apache does in the seed: GET and HEAD,
 * Range, ETag and Last-Modified with their conditional requests, listings, streamed from disk
 * (send), dotfiles (temp files, the lock) hidden, nothing outside the folder.
 */
export async function registerRepositories(app: FastifyInstance, repositories: ServedRepository[]): Promise<void> {
  let first = true;
  for (const repository of repositories) {
    await mkdir(repository.dir, { recursive: true });
    const prefix = `/packages/${repository.name}/`;
    await app.register(fastifyStatic, {
      root: repository.dir,
      prefix,
      decorateReply: first,
      index: false,
      dotfiles: 'ignore',
      etag: true,
      lastModified: true,
      acceptRanges: true,
      cacheControl: false,
      list: { format: 'html', render: listing(prefix) },
    });
    first = false;
  }
  // packages.checksum is text, as md5sum writes it; the mime table does not know the suffix.
  app.addHook('onSend', async (request, reply, payload) => {
    if (request.url.startsWith('/packages/') && /\.checksum(?:\?|$)/.test(request.url) && reply.statusCode < 300) {
      void reply.header('content-type', 'text/plain; charset=utf-8');
    }
    return payload;
  });
}
