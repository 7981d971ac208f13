import type { PackagerEvent } from '../packager/index.js';
import { countOf, formatBytes, type Output } from './output.js';

/**
 * Turns packager events into output: on a terminal one status line redrawn in place, with
 * failures printed above it; otherwise one plain line per event, for logs and CI.
 */
export function createProgress(output: Output, enabled: boolean): { onEvent: (event: PackagerEvent) => void; finish: () => void } {
  let total = 0;
  let packed = 0;
  let published = 0;
  let drawn = false;
  const draw = (): void => {
    if (!output.isTTY) return;
    process.stderr.write(`\r\x1b[Kpacking ${packed}/${total} · published ${published}`);
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
  const onEvent = (event: PackagerEvent): void => {
    if (!enabled) return;
    switch (event.type) {
      case 'plan':
        total = event.toPack;
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
        break;
      case 'removed':
        line(`removed ${event.file} from ${event.location}`);
        break;
      case 'package-failed':
        line(`failed: ${event.file}: ${event.error}`, true);
        break;
      case 'location-failed':
        line(`failed: ${event.location}: ${event.error}`, true);
        break;
      case 'warning':
        line(`warning: ${event.message}`, true);
        break;
    }
  };
  return { onEvent, finish: clear };
}
