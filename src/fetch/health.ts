import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../fs/atomic.js';
import { systemClock } from './clock.js';

interface Standing {
  failures: number;
  /** Epoch ms until which the repository is skipped. */
  until: number;
  reason: string;
}

/**
 * Which repositories are slow to fail just now. A repository that timed out or stalled is
 * skipped until its cool-down ends, so every later package does not pay its timeout again.
 * Kept in the package cache, so separate installs on one machine share what they learnt.
 * The fetcher records only slow failures here (see FetchFailure.down).
 */
export class RepositoryHealth {
  private readonly standings = new Map<string, Standing>();

  private constructor(
    private readonly cooldownMs: number,
    private readonly file: string | undefined,
    private readonly now: () => number,
  ) {}

  /** `now` gives epoch ms: the cool-downs kept in the file are shared with other processes. */
  static async open(cooldownMs: number, cacheDir: string | undefined, now: () => number = systemClock.now): Promise<RepositoryHealth> {
    const health = new RepositoryHealth(cooldownMs, cacheDir === undefined ? undefined : path.join(cacheDir, 'repository-health.json'), now);
    if (health.file) {
      try {
        const data: unknown = JSON.parse(await readFile(health.file, 'utf8'));
        if (typeof data === 'object' && data !== null) {
          for (const [name, value] of Object.entries(data as Record<string, unknown>)) {
            const v = value as Partial<Standing> | null;
            if (typeof v?.failures === 'number' && typeof v.until === 'number') {
              health.standings.set(name, { failures: v.failures, until: v.until, reason: typeof v.reason === 'string' ? v.reason : 'unreachable' });
            }
          }
        }
      } catch {
        // None yet, or damaged: every repository is tried.
      }
    }
    return health;
  }

  /** Milliseconds the repository is still skipped for; 0 when it may be tried. */
  coolingDown(name: string): number {
    const now = this.now();
    const standing = this.standings.get(name);
    return standing && standing.until > now ? standing.until - now : 0;
  }

  lastFailure(name: string): string {
    return this.standings.get(name)?.reason ?? 'unreachable';
  }

  async failed(name: string, reason: string): Promise<void> {
    const failures = (this.standings.get(name)?.failures ?? 0) + 1;
    this.standings.set(name, { failures, until: this.now() + this.cooldownMs, reason });
    await this.save();
  }

  async succeeded(name: string): Promise<void> {
    if (!this.standings.delete(name)) return;
    await this.save();
  }

  private async save(): Promise<void> {
    if (!this.file || this.cooldownMs === 0) return;
    await writeFileAtomic(this.file, `${JSON.stringify(Object.fromEntries(this.standings), null, 2)}\n`).catch(() => undefined);
  }
}
