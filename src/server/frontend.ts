import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Compression, FetchTls, Location } from '../config/index.js';
import { listedEntries } from '../packages/index.js';
import { verifyLocations, type VerifyLocationReport } from '../packager/index.js';
import { createUploadTarget } from '../repositories/index.js';
import type { Resources } from '../resources.js';
import { hasToken } from './auth.js';
import { escapeHtml } from './html.js';
import type { CacheStats, TrafficSample } from './cache.js';
import type { ServedRepository } from './repository-handler.js';

/**
 * A check reads (and on S3 downloads) every upload location whole: a request without the token
 * gets the last result at once, and starts a new check in the background at most this often.
 */
const CHECK_MIN_INTERVAL_MS = 60_000;

/** One consistency check of every upload location, and when it ended. */
export interface ConsistencyCheck {
  checkedAt: string;
  locations: VerifyLocationReport[];
}

export interface FrontendSettings {
  repositories: ServedRepository[];
  /** Every upload_location and custom_upload_location, for the consistency view. */
  checkedLocations: Location[];
  compression: Compression;
  minimumFreeBytes: number;
  uploadsEnabled: boolean;
  /** With it, a request forces a fresh consistency check. */
  token: string | undefined;
  /** The caching front's bytes served and fetched upstream over the last hour, when there is one. */
  traffic: (() => Promise<TrafficSample[]>) | undefined;
  /** fetch_ca_file and the client certificate of the server's config, for an https S3 endpoint. */
  tls: FetchTls | undefined;
  /** The server's connections, for ssh and s3 locations. */
  resources: Resources;
}

export interface ListedRepository {
  name: string;
  url: string;
  packages: { file: string; type: string; name: string; size: number | undefined; md5: string; sha256: string | undefined; date: string | undefined }[];
  /** For a repository served through the caching front. */
  cache?: CacheStats;
}

async function listRepositories(repositories: ServedRepository[], owner: Pick<FrontendSettings, 'resources' | 'tls'>): Promise<ListedRepository[]> {
  return Promise.all(
    repositories.map(async (repository) => {
      const index =
        'cached' in repository
          ? await repository.cached.readIndex()
          : await createUploadTarget(repository.location, { resources: owner.resources, tls: owner.tls }).readIndex();
      const packages = listedEntries(index).map(({ publishedAt, ...listed }) => ({ ...listed, date: publishedAt }));
      return { name: repository.name, url: `/packages/${repository.name}/`, packages, ...('cached' in repository ? { cache: repository.cached.stats() } : {}) };
    }),
  );
}

function formatSize(bytes: number | undefined): string {
  if (bytes === undefined) return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value.toString() : value.toFixed(1)} ${units[unit] ?? 'B'}`;
}

/**
 * A publication date as a person reads it: to the second, no milliseconds. The page shows UTC
 * until its script rewrites it in the reader's own time zone; the exact instant stays in
 * `datetime` and the tooltip.
 */
function formatDate(iso: string | undefined): string {
  if (iso === undefined) return '';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return escapeHtml(iso);
  const text = `${date.toISOString().slice(0, 19).replace('T', ' ')} UTC`;
  return `<time datetime="${escapeHtml(date.toISOString())}" title="${escapeHtml(date.toISOString())}">${text}</time>`;
}

/** "6 packages, 167.6 KiB": a repository's count and the bytes its index records. */
function formatTotals(packages: ListedRepository['packages']): string {
  const bytes = packages.reduce((sum, p) => sum + (p.size ?? 0), 0);
  const unknown = packages.some((p) => p.size === undefined) ? ' (some sizes not recorded)' : '';
  return `${packages.length.toString()} package${packages.length === 1 ? '' : 's'}, ${formatSize(bytes)}${unknown}`;
}

const STYLE = `body{font-family:system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse;width:100%;margin-bottom:2rem}
th,td{text-align:left;padding:.3rem .6rem;border-bottom:1px solid #ddd}td.num{text-align:right}code{font-size:.85em}
.bad{color:#b00020}.good{color:#1b5e20}progress{width:20rem}nav a{margin-right:1rem}form{margin:1rem 0 2rem}`;

function page(title: string, body: string): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title><style>${STYLE}</style></head>
<body><nav><a href="/">Packages</a><a href="/consistency">Consistency</a><a href="/metrics">Metrics</a></nav>${body}</body></html>`;
}

/** Answers that cost no upstream fetch (a cached entry, or a download another answer started), of all package answers. */
function hitRatio(stats: CacheStats): string {
  const all = stats.hits + stats.coalesced + stats.misses + stats.passedThrough;
  return all === 0 ? 'no requests yet' : `${Math.round((100 * (stats.hits + stats.coalesced)) / all).toString()}%`;
}

function cacheSummary(stats: CacheStats): string {
  return `<div class="cache"><p>Cache: <span class="entries">${stats.entries.toString()} package${stats.entries === 1 ? '' : 's'}, ${escapeHtml(formatSize(stats.bytes))}</span>;
hit ratio <span class="hit-ratio">${escapeHtml(hitRatio(stats))}</span> <small>(${stats.hits.toString()} from the cache, ${stats.coalesced.toString()} joined a download under way, ${stats.misses.toString()} fetched, ${stats.passedThrough.toString()} streamed through)</small></p>
${stats.stale ? '<p class="bad stale">Every upstream is down: the last good index and the cached packages are served.</p>' : ''}</div>`;
}

const CHART = { width: 640, height: 160, left: 70, bottom: 24 };

/**
 * Bytes served and bytes fetched upstream over the last hour, cumulated from the hour's start,
 * as an inline SVG drawn here (no script, no library): the gap between the lines is what the
 * cache saved the upstreams.
 */
function trafficChart(samples: TrafficSample[]): string {
  const last = samples.at(-1);
  if (!last) return '';
  const from = last.at - 3600_000;
  const inWindow = samples.filter((sample) => sample.at >= from);
  const base = [...samples].reverse().find((sample) => sample.at < from) ?? inWindow[0] ?? last;
  const points = [{ ...base, at: Math.max(base.at, from) }, ...inWindow.filter((sample) => sample !== base)];
  const served = last.served - base.served;
  const upstream = last.upstream - base.upstream;
  const top = Math.max(served, upstream, 1);
  const plotWidth = CHART.width - CHART.left - 10;
  const plotHeight = CHART.height - CHART.bottom - 10;
  const line = (value: (sample: TrafficSample) => number): string =>
    points
      .map((sample) => {
        const x = CHART.left + ((sample.at - from) / 3600_000) * plotWidth;
        const y = 10 + plotHeight - (value(sample) / top) * plotHeight;
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      })
      .join(' ');
  const saved = served === 0 ? '' : ` (${Math.round((100 * Math.max(0, served - upstream)) / served).toString()}% of the bytes served came from the cache)`;
  return `<h2>Caching front: the last hour</h2>
<p class="traffic">Served <span class="served-total">${escapeHtml(formatSize(served))}</span>, fetched upstream <span class="upstream-total">${escapeHtml(formatSize(upstream))}</span>${escapeHtml(saved)}.</p>
<svg class="traffic-chart" role="img" aria-label="bytes served and fetched upstream over the last hour" width="${CHART.width.toString()}" height="${CHART.height.toString()}" viewBox="0 0 ${CHART.width.toString()} ${CHART.height.toString()}" xmlns="http://www.w3.org/2000/svg">
<line x1="${CHART.left.toString()}" y1="${(10 + plotHeight).toString()}" x2="${(CHART.width - 10).toString()}" y2="${(10 + plotHeight).toString()}" stroke="#999"/>
<line x1="${CHART.left.toString()}" y1="10" x2="${CHART.left.toString()}" y2="${(10 + plotHeight).toString()}" stroke="#999"/>
<text x="${(CHART.left - 6).toString()}" y="16" text-anchor="end" font-size="11">${escapeHtml(formatSize(top))}</text>
<text x="${(CHART.left - 6).toString()}" y="${(10 + plotHeight).toString()}" text-anchor="end" font-size="11">0</text>
<text x="${CHART.left.toString()}" y="${(CHART.height - 6).toString()}" font-size="11">1 h ago</text>
<text x="${(CHART.width - 10).toString()}" y="${(CHART.height - 6).toString()}" text-anchor="end" font-size="11">now</text>
<polyline class="served" fill="none" stroke="#1565c0" stroke-width="2" points="${line((sample) => sample.served - base.served)}"><title>served</title></polyline>
<polyline class="upstream" fill="none" stroke="#e65100" stroke-width="2" stroke-dasharray="5 3" points="${line((sample) => sample.upstream - base.upstream)}"><title>fetched upstream</title></polyline>
<text x="${(CHART.left + 8).toString()}" y="24" font-size="11" fill="#1565c0">served</text>
<text x="${(CHART.left + 60).toString()}" y="24" font-size="11" fill="#e65100">fetched upstream</text>
</svg>`;
}

function packagesPage(repositories: ListedRepository[], uploadsEnabled: boolean, traffic: TrafficSample[] | undefined): string {
  const tables = repositories
    .map((repository) => {
      const rows = repository.packages
        .map(
          (p) => `<tr data-file="${escapeHtml(p.file)}" data-search="${escapeHtml(`${p.type} ${p.name} ${p.file}`.toLowerCase())}">
<td>${escapeHtml(p.type)}</td><td><a href="${escapeHtml(repository.url + encodeURIComponent(p.file))}">${escapeHtml(p.name)}</a></td>
<td class="num">${escapeHtml(formatSize(p.size))}</td><td><code title="sha256 ${escapeHtml(p.sha256 ?? 'not recorded')}">${escapeHtml(p.md5)}</code></td>
<td>${formatDate(p.date)}</td>
<td>${repository.name === 'custom' && uploadsEnabled ? `<button class="delete" data-file="${escapeHtml(p.file)}">Delete</button>` : ''}</td></tr>`,
        )
        .join('\n');
      return `<h2 id="repo-${escapeHtml(repository.name)}">${escapeHtml(repository.name)} <small><a href="${escapeHtml(repository.url)}">${escapeHtml(repository.url)}</a></small></h2>
<p class="totals">${escapeHtml(formatTotals(repository.packages))}</p>
${repository.cache ? cacheSummary(repository.cache) : ''}
<table class="packages" data-repository="${escapeHtml(repository.name)}"><thead><tr><th>Type</th><th>Name</th><th>Size</th><th>md5</th><th>Published</th><th></th></tr></thead>
<tbody>${rows || '<tr class="empty"><td colspan="6">no packages</td></tr>'}</tbody></table>`;
    })
    .join('\n');
  const form = uploadsEnabled
    ? `<h2>Upload a custom test or kernel</h2>
<form id="upload"><input type="file" id="file" required> <input type="password" id="token" placeholder="upload token" required autocomplete="off">
<button type="submit">Upload</button> <progress id="progress" max="100" value="0" hidden></progress> <span id="status" role="status"></span>
<p><small>A test is a <code>test-NAME.tar.bz2</code> tarball (deps and profilers alike); any other name is published as a plain file.</small></p></form>`
    : '<p><small>Uploads are disabled: the server has no <code>upload_token</code>.</small></p>';
  return page(
    'Autotest packages',
    `<h1>Autotest packages</h1>
<p><input type="search" id="filter" placeholder="filter by type or name" autofocus></p>
${traffic ? trafficChart(traffic) : ''}
${tables}
${form}
<script>${SCRIPT}</script>`,
  );
}

/** The page's only script: dates in the reader's time zone, filter, upload with progress, delete with confirmation. No build step. */
const SCRIPT = `
const two = (n) => String(n).padStart(2, '0');
for (const time of document.querySelectorAll('time[datetime]')) {
  const d = new Date(time.getAttribute('datetime'));
  time.textContent = d.getFullYear() + '-' + two(d.getMonth() + 1) + '-' + two(d.getDate()) + ' ' + two(d.getHours()) + ':' + two(d.getMinutes()) + ':' + two(d.getSeconds());
}
const filter = document.getElementById('filter');
filter.addEventListener('input', () => {
  const q = filter.value.trim().toLowerCase();
  for (const row of document.querySelectorAll('table.packages tbody tr[data-search]')) {
    row.hidden = q !== '' && !row.dataset.search.includes(q);
  }
});
const token = () => (document.getElementById('token') || {}).value || sessionStorage.getItem('autotest-token') || '';
const status = document.getElementById('status');
const form = document.getElementById('upload');
if (form) form.addEventListener('submit', (event) => {
  event.preventDefault();
  const file = document.getElementById('file').files[0];
  if (!file) return;
  const given = token();
  const progress = document.getElementById('progress');
  progress.hidden = false;
  progress.value = 0;
  status.textContent = 'uploading ' + file.name;
  const xhr = new XMLHttpRequest();
  xhr.open('PUT', '/api/custom/' + encodeURIComponent(file.name));
  xhr.setRequestHeader('Authorization', 'Bearer ' + given);
  xhr.setRequestHeader('Content-Type', 'application/octet-stream');
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) progress.value = Math.round(100 * e.loaded / e.total); };
  xhr.onload = () => {
    let answer = {};
    try { answer = JSON.parse(xhr.responseText); } catch (e) { answer = { message: xhr.responseText }; }
    // Only a token the server took is kept for this tab (the delete buttons use it after the reload).
    if (xhr.status === 200) { sessionStorage.setItem('autotest-token', given); status.textContent = 'published ' + file.name; location.reload(); return; }
    if (xhr.status === 401) sessionStorage.removeItem('autotest-token');
    progress.hidden = true;
    status.textContent = 'failed (' + xhr.status + '): ' + (answer.message || '');
  };
  xhr.onerror = () => { progress.hidden = true; status.textContent = 'failed: the connection broke'; };
  xhr.send(file);
});
for (const button of document.querySelectorAll('button.delete')) {
  button.addEventListener('click', async () => {
    const file = button.dataset.file;
    if (!confirm('Delete ' + file + ' from every custom location?')) return;
    const answer = await fetch('/api/custom/' + encodeURIComponent(file), { method: 'DELETE', headers: { Authorization: 'Bearer ' + token() } });
    // 404: deleted meanwhile (another tab, upkeep): the list is out of date.
    if (answer.ok || answer.status === 404) location.reload();
    else status.textContent = 'delete failed (' + answer.status + '): ' + ((await answer.json().catch(() => ({}))).message || '');
  });
}
`;

function consistencyPage(check: ConsistencyCheck): string {
  const sections = check.locations
    .map((report) => {
      const state = report.error
        ? `<span class="bad">unreachable: ${escapeHtml(report.error.message)}</span>`
        : report.problems.length === 0
          ? `<span class="good">consistent</span> (${report.entries.toString()} indexed)`
          : `<span class="bad">${report.problems.length.toString()} problem(s)</span> (${report.entries.toString()} indexed)`;
      const rows = report.problems
        .map((p) => `<tr class="problem"><td>${escapeHtml(p.kind)}</td><td>${escapeHtml(p.file)}</td><td>${escapeHtml(p.detail)}</td></tr>`)
        .join('\n');
      return `<section class="location" data-location="${escapeHtml(report.location)}"><h2>${escapeHtml(report.location)}</h2><p>${state}</p>
${rows ? `<table><thead><tr><th>Problem</th><th>File</th><th>Detail</th></tr></thead><tbody>${rows}</tbody></table>` : ''}</section>`;
    })
    .join('\n');
  return page(
    'Consistency of the upload locations',
    `<h1>Consistency of the upload locations</h1>
<p>Each upload location checked against its index (<code>autotest packager verify</code>); <code>verify --repair</code> fixes drift.
Checked at <time class="checked-at" datetime="${escapeHtml(check.checkedAt)}">${escapeHtml(check.checkedAt)}</time>; a new check runs at most once a minute, or at once for a request with the upload token.</p>
${sections}`,
  );
}

/** The web frontend: the packages page, the consistency view, and their JSON. */
export function registerFrontend(app: FastifyInstance, settings: FrontendSettings): void {
  let last: ConsistencyCheck | undefined;
  let running: Promise<ConsistencyCheck> | undefined;
  let startedAt = -Infinity;
  // One check at a time: whoever asks while one runs waits for that one.
  const startCheck = (): Promise<ConsistencyCheck> => {
    startedAt = performance.now();
    running ??= verifyLocations({
      locations: settings.checkedLocations,
      repair: false,
      clientDir: undefined,
      compression: settings.compression,
      minimumFreeBytes: settings.minimumFreeBytes,
      tls: settings.tls,
      resources: settings.resources,
    })
      .then((locations) => {
        last = { checkedAt: new Date().toISOString(), locations };
        return last;
      })
      .finally(() => {
        running = undefined;
      });
    return running;
  };
  const consistency = (request: FastifyRequest): Promise<ConsistencyCheck> => {
    if (hasToken(settings.token, request)) return running ?? startCheck();
    if (!last) return running ?? startCheck();
    if (!running && performance.now() - startedAt >= CHECK_MIN_INTERVAL_MS) {
      // A failed background check leaves the last result standing; the next one tries again.
      startCheck().catch(() => undefined);
    }
    return Promise.resolve(last);
  };
  app.get('/', async (_request, reply) => {
    const [repositories, traffic] = await Promise.all([listRepositories(settings.repositories, settings), settings.traffic?.()]);
    return reply.type('text/html; charset=utf-8').send(packagesPage(repositories, settings.uploadsEnabled, traffic));
  });
  app.get('/api/packages', async () => listRepositories(settings.repositories, settings));
  app.get('/consistency', async (request, reply) => reply.type('text/html; charset=utf-8').send(consistencyPage(await consistency(request))));
  app.get('/api/consistency', async (request) => consistency(request));
  app.get('/favicon.ico', async (_request, reply) => reply.code(204).send());
}
