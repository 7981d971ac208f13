import type { DownloadProgress } from '../fetch/index.js';
import type { PackagerEvent } from '../packager/index.js';
import { countOf, formatBytes, type Output } from './output.js';

/** Packager events turned into output, and the failures already printed, each with its hint. */
export interface Progress {
  onEvent: (event: PackagerEvent) => void;
  finish: () => void;
  /** Prints a failure and its hint, unless the same failure was printed already. */
  failure: (text: string, hint: string | undefined) => void;
}

/**
 * Turns packager events into output: on a terminal one status line redrawn in place, with
 * failures printed above it; otherwise one plain line per event, for logs and CI. A failure
 * is printed once, live, with its hint; the summary after the run leaves it out.
 */
export function createProgress(output: Output, enabled: boolean): Progress {
  let total = 0;
  let packed = 0;
  let published = 0;
  // Copies to send: every package to every location, less those a location already has.
  let copies = 0;
  let unchanged = 0;
  let drawn = false;
  let finished = false;
  const draw = (): void => {
    if (!output.isTTY || finished) return;
    process.stderr.write(
      `\r\x1b[Kpacked ${packed.toString()} of ${total.toString()} · published ${published.toString()} of ${Math.max(published, copies - unchanged).toString()}`,
    );
    drawn = true;
  };
  const clear = (): void => {
    if (drawn) process.stderr.write('\r\x1b[K');
    drawn = false;
  };
  const line = (text: string, isError = false): void => {
    if (output.isTTY) {
      clear();
      if (isError) output.err(text);
      draw();
    } else if (isError) output.err(text);
    else output.out(text);
  };
  const shown = new Set<string>();
  const failure = (text: string, hint: string | undefined): void => {
    if (shown.has(text)) return;
    shown.add(text);
    line(text, true);
    if (hint) line(`  hint: ${hint}`, true);
  };
  const onEvent = (event: PackagerEvent): void => {
    if (!enabled) return;
    switch (event.type) {
      case 'plan':
        total = event.toPack;
        copies = event.packages * event.locations;
        if (!output.isTTY) output.out(`${countOf(event.packages, 'package')}, ${event.toPack.toString()} to pack, ${countOf(event.locations, 'location')}`);
        draw();
        break;
      case 'packed':
        packed += 1;
        if (output.isTTY) draw();
        else line(`packed ${event.file} (${formatBytes(event.size)}, ${event.seconds.toFixed(2)} s)`);
        break;
      case 'published':
        published += 1;
        if (output.isTTY) draw();
        else line(`published ${event.file} to ${event.location}`);
        break;
      case 'unchanged':
        unchanged += 1;
        if (output.isTTY && copies > 0) draw();
        break;
      case 'removed':
        line(`removed ${event.file} from ${event.location}`);
        break;
      case 'package-failed':
        failure(`failed: ${event.file}: ${event.error}`, event.hint);
        break;
      case 'location-failed':
        failure(`failed: ${event.location}: ${event.error}`, event.hint);
        break;
      case 'warning':
        line(`warning: ${event.message}`, true);
        break;
    }
  };
  const finish = (): void => {
    clear();
    finished = true;
  };
  return { onEvent, finish, failure };
}

/** One download's status line: what, from where, how far, how fast. */
export function describeDownload(progress: DownloadProgress, seconds: number): string {
  const of =
    progress.size === undefined || progress.size === 0
      ? ''
      : ` of ${formatBytes(progress.size)} (${Math.floor((100 * progress.bytes) / progress.size).toString()}%)`;
  const rate = seconds > 0 ? `, ${formatBytes(progress.bytes / seconds)}/s` : '';
  return `${progress.file} from ${progress.repository}: ${formatBytes(progress.bytes)}${of}${rate}`;
}

/** Downloads taking long enough to notice get one status line on a terminal, redrawn at most 4 times a second. */
const FIRST_DRAW_MS = 500;
const REDRAW_MS = 250;

/**
 * On a terminal, a status line for the download under way (the one that moved last, when
 * several run at once); nothing otherwise, so logs keep one line per package.
 */
export function createDownloadProgress(output: Output): { onProgress: (progress: DownloadProgress) => void; finish: () => void } {
  const started = new Map<string, number>();
  let lastDraw = 0;
  let drawn = false;
  const onProgress = (progress: DownloadProgress): void => {
    if (!output.isTTY) return;
    const now = performance.now();
    const since = started.get(progress.file) ?? now;
    started.set(progress.file, since);
    if (now - since < FIRST_DRAW_MS || now - lastDraw < REDRAW_MS) return;
    lastDraw = now;
    process.stderr.write(`\r\x1b[K${describeDownload(progress, (now - since) / 1000)}`);
    drawn = true;
  };
  const finish = (): void => {
    if (drawn) process.stderr.write('\r\x1b[K');
    drawn = false;
  };
  return { onProgress, finish };
}
