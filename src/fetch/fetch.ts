import { flattenFetchLocations, type FetchLocation, type FetchSettings, type Location } from '../config/index.js';
import { AutotestError, isAutotestError } from '../errors.js';
import { indexProblems, type IndexEntry, type RepositoryIndex } from '../packages/index.js';
import { fetchRepositoryFor, type FetchRepository } from '../repositories/index.js';
import { Resources } from '../resources.js';
import type { IndexTrust } from '../signing/index.js';
import { clockFrom, type FetchClock } from './clock.js';
import { Download, type Downloaded, type DownloadProgress } from './download.js';
import { AllRepositoriesFailed } from './errors.js';
import { classifyNetworkError } from '../repositories/read-failure.js';
import { HASHING_THREAD } from './hashing.js';
import { RepositoryHealth } from './health.js';
import { openIndexTrust } from './kept-indexes.js';
import { orderForPackage } from './rendezvous.js';

export type { DownloadProgress } from './download.js';

export interface FetchedPackage extends Downloaded {
  /**
   * Why each repository listed before the one that served failed (empty when none did). One
   * that simply lacks the package is not named: builtin and custom repositories side by side
   * each lack the other's packages, and that is no cause for a warning.
   */
  passedOver: string[];
}

export interface FetcherOptions {
  /** The package cache: where cool-downs, serials and verified indexes are kept (none: kept in memory). */
  stateDir?: string | undefined;
  /** Hears what was wrong in an index that was used all the same (a malformed line left out). */
  onWarning?: ((message: string) => void) | undefined;
  /** Connections and the hashing thread: the command's; by default the fetcher's own, closed by close(). */
  resources?: Resources | undefined;
  /** The read side of each location: fetchRepositoryFor by default. */
  repositoryFor?: ((location: Location) => FetchRepository) | undefined;
  /** The clock the cool-downs, deadlines and pauses are measured on. */
  now?: () => number;
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** Spreads the backoff pauses. */
  random?: () => number;
}

/**
 * Fetches packages from the repositories of fetch_location, in their order (a `|` group's
 * members in the order rendezvous hashing gives each package): per repository a
 * connect timeout, a deadline, retries with backoff on transient failures, resume of a cut
 * download, and verification against that repository's index before the file is renamed to
 * its name (see Download). A repository that fails slowly (connect timeout, stall) cools
 * down; when all fail, one error lists every repository tried and why. Its repositories,
 * clock and chance come from its options, so the policy is tested without servers.
 */
export class PackageFetcher {
  private readonly repositories = new Map<Location, FetchRepository>();
  private readonly indexes = new Map<FetchRepository, Promise<RepositoryIndex>>();
  private readonly onWarning: (message: string) => void;

  private constructor(
    private readonly locations: FetchLocation[],
    private readonly settings: FetchSettings,
    private readonly parts: { health: RepositoryHealth; trust: IndexTrust | undefined; clock: FetchClock; resources: Resources; ownsResources: boolean },
    options: FetcherOptions,
  ) {
    const repositoryFor = options.repositoryFor ?? ((location: Location) => fetchRepositoryFor(location, settings, parts.resources));
    for (const location of flattenFetchLocations(locations)) this.repositories.set(location, repositoryFor(location));
    this.onWarning = options.onWarning ?? (() => undefined);
  }

  static async create(locations: FetchLocation[], settings: FetchSettings, options: FetcherOptions = {}): Promise<PackageFetcher> {
    if (locations.length === 0) {
      throw new AutotestError('ERR_CONFIG', 'no repository to fetch from: fetch_location is empty', {
        hint: 'list your repositories in fetch_location in [PACKAGES], nearest first',
      });
    }
    const clock = clockFrom(options);
    const trust = await openIndexTrust(settings.trust, options.stateDir);
    const health = await RepositoryHealth.open(settings.cooldownMs, options.stateDir, clock.now);
    const resources = options.resources ?? new Resources();
    return new PackageFetcher(locations, settings, { health, trust, clock, resources, ownsResources: options.resources === undefined }, options);
  }

  /** Closes the fetcher's connections and hashing thread, unless they were given to it. */
  async close(): Promise<void> {
    if (this.parts.ownsResources) await this.parts.resources.close();
  }

  private get health(): RepositoryHealth {
    return this.parts.health;
  }

  get names(): string[] {
    return [...this.repositories.values()].map((repository) => repository.name);
  }

  /** The repositories in the order to try for `file`. */
  private orderFor(file: string): FetchRepository[] {
    return orderForPackage(this.locations, file).flatMap((location) => this.repositories.get(location) ?? []);
  }

  /** The repository's index, read once per fetcher. */
  private index(repository: FetchRepository): Promise<RepositoryIndex> {
    let index = this.indexes.get(repository);
    if (!index) {
      // A failure is kept too: one fetcher never pays the same timeout twice.
      index = repository.readIndex(this.parts.trust).then((read) => {
        for (const problem of indexProblems(read)) this.onWarning(problem);
        return read;
      });
      this.indexes.set(repository, index);
      index.catch(() => undefined);
    }
    return index;
  }

  /** Walks the repositories in `file`'s order; `attempt` returns a result, or throws why this one failed. */
  private async firstThatWorks<T>(
    what: string,
    file: string,
    attempt: (repository: FetchRepository, index: RepositoryIndex) => Promise<T | string>,
  ): Promise<T & { passedOver: string[] }> {
    const reasons: string[] = [];
    const failures: string[] = [];
    const hints = new Set<string>();
    for (const repository of this.orderFor(file)) {
      const wait = this.health.coolingDown(repository.name);
      if (wait > 0) {
        const reason = `${repository.name}: skipped for ${Math.ceil(wait / 1000).toString()} s more (fetch_cooldown) after: ${this.health.lastFailure(repository.name)}`;
        reasons.push(reason);
        failures.push(reason);
        continue;
      }
      try {
        const result = await attempt(repository, await this.index(repository));
        await this.health.succeeded(repository.name);
        if (typeof result === 'string') reasons.push(`${repository.name}: ${result}`);
        else return { ...result, passedOver: failures };
      } catch (error) {
        // The package cache refusing is this machine's problem: no other repository would do better.
        if (isAutotestError(error, 'ERR_LOCATION_REFUSED')) throw error;
        const failure = classifyNetworkError(error, repository.name);
        const reason = error instanceof AutotestError ? error.message : failure.message;
        // Only a slow failure is remembered: an instant one costs little to meet again, and
        // is often a setting (a CA, a started server) being fixed right now.
        if (failure.down) await this.health.failed(repository.name, reason);
        const hint = error instanceof AutotestError ? error.hint : failure.hint;
        if (hint !== undefined) hints.add(hint);
        const shown = hint === undefined ? reason : `${reason} (${hint})`;
        reasons.push(shown);
        failures.push(shown);
      }
    }
    throw new AllRepositoriesFailed(`cannot get ${what}: no repository could provide it:\n${reasons.map((r) => `  - ${r}`).join('\n')}`, {
      failures,
      hint: [...hints, 'check fetch_location and that the package was published ("autotest packager list")'].join('; '),
    });
  }

  /** The index entry of the first of `files` found, in the repository order of the first of them (the name Autotest gives the package). */
  async lookup(files: string[]): Promise<{ file: string; entry: IndexEntry; repository: string; passedOver: string[] }> {
    return this.firstThatWorks(files.join(' or '), files[0] ?? '', (repository, index) => {
      for (const file of files) {
        const entry = index.get(file);
        if (entry) return Promise.resolve({ file, entry, repository: repository.name });
      }
      return Promise.resolve(`${files.join(' or ')} is not in its index`);
    });
  }

  /** Fetches `file` to `dest` (a path in the package cache), verified. */
  async fetch(file: string, dest: string, onProgress?: (progress: DownloadProgress) => void): Promise<FetchedPackage> {
    return this.firstThatWorks(file, file, async (repository, index) => {
      const entry = index.get(file);
      if (!entry) return `${file} is not in its index`;
      const {
        settings,
        parts: { clock, resources },
      } = this;
      return new Download({ settings, clock, hashing: () => resources.get(HASHING_THREAD) }, { repository, file, entry, dest, onProgress }).run();
    });
  }
}
