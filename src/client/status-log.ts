import { appendFile } from 'node:fs/promises';

export type Status = 'GOOD' | 'FAIL' | 'ERROR' | 'ABORT' | 'WARN' | 'TEST_NA';

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

function localtime(date: Date): string {
  const pad = (n: number): string => n.toString().padStart(2, '0');
  return `${MONTHS[date.getMonth()] ?? 'Jan'} ${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

/** One field of a status line: tabs and newlines would break the format, so they become spaces. */
function field(text: string): string {
  return text.replace(/[\t\r\n]+/g, ' ');
}

/**
 * Autotest's status.log: tab-separated lines, indented by nesting, e.g.
 *   START	sleeptest	sleeptest	timestamp=1237334016	localtime=Mar 17 17:00:16
 *   	GOOD	sleeptest	sleeptest	timestamp=1237334026	localtime=Mar 17 17:00:26	completed successfully
 *   END GOOD	sleeptest	sleeptest	timestamp=1237334026	localtime=Mar 17 17:00:26
 * `onLine` sees each line as it is written (autoserv streams them).
 */
export function createStatusLog(file: string, onLine: (line: string) => void = () => undefined) {
  let depth = 0;
  let writing = Promise.resolve();
  const write = (kind: string, subdir: string, name: string, message = ''): Promise<void> => {
    const now = new Date();
    const line = `${'\t'.repeat(depth)}${kind}\t${field(subdir)}\t${field(name)}\ttimestamp=${Math.floor(now.getTime() / 1000).toString()}\tlocaltime=${localtime(now)}\t${field(message)}`;
    onLine(line);
    writing = writing.then(() => appendFile(file, `${line}\n`));
    return writing;
  };
  return {
    async start(subdir: string, name: string): Promise<void> {
      await write('START', subdir, name);
      depth += 1;
    },
    async end(status: Status, subdir: string, name: string, message: string): Promise<void> {
      await write(status, subdir, name, message);
      depth = Math.max(0, depth - 1);
      await write(`END ${status}`, subdir, name);
    },
    record: (status: Status, subdir: string, name: string, message: string): Promise<void> => write(status, subdir, name, message),
    flush: (): Promise<void> => writing,
  };
}

export type StatusLog = ReturnType<typeof createStatusLog>;
