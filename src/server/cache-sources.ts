import { describeLocation, type FetchLocation, type Location } from '../config/index.js';
import { orderForPackage } from '../fetch/index.js';
import type { IndexEntry, RepositoryIndex } from '../packages/index.js';
import type { FetchRepository } from '../repositories/index.js';
import { entryKey } from './cache-store.js';

/**
 * Which upstreams of one served repository may give the bytes of a package: the one whose
 * index is served, and the others only where their own index gives the same checksum. What it
 * learns (the other indexes, the upstreams that sent a bad copy) holds for one served index:
 * clear() when the served index changes.
 */
export class PackageSources {
  /** The index of each upstream other than the served one, read once (undefined: unreadable). */
  private readonly otherIndexes = new Map<string, Promise<RepositoryIndex | undefined>>();
  /** Upstreams whose copy of a key failed verification: asked last for it. */
  private readonly passedOver = new Map<string, Set<string>>();

  constructor(
    private readonly upstreams: readonly FetchLocation[],
    private readonly repositoryFor: (location: Location) => FetchRepository,
  ) {}

  clear(): void {
    this.otherIndexes.clear();
    this.passedOver.clear();
  }

  /** `upstream` sent a copy of `key` that is not the index's. */
  passOver(key: string, upstream: string): void {
    const upstreams = this.passedOver.get(key) ?? new Set<string>();
    upstreams.add(upstream);
    this.passedOver.set(key, upstreams);
  }

  /** Where the bytes of `entry` may come from, in the order to ask them: the upstream `source` whose index is served, others only when their index agrees. */
  async candidatesFor(source: Location, file: string, entry: IndexEntry): Promise<FetchRepository[]> {
    const distrusted = this.passedOver.get(entryKey(entry));
    const sourceLabel = describeLocation(source);
    const candidates: FetchRepository[] = [];
    // One that sent a bad copy goes last: with no other, it is asked again (a publish may be under way).
    const ordered = orderForPackage(this.upstreams, file);
    const isDistrusted = (location: Location): boolean => distrusted?.has(describeLocation(location)) ?? false;
    for (const location of [...ordered.filter((location) => !isDistrusted(location)), ...ordered.filter(isDistrusted)]) {
      const label = describeLocation(location);
      if (label === sourceLabel || (await this.agrees(location, file, entry))) candidates.push(this.repositoryFor(location));
    }
    return candidates;
  }

  /** Whether the index of the upstream at `location` gives `file` the checksum of `entry`. */
  private async agrees(location: Location, file: string, entry: IndexEntry): Promise<boolean> {
    const label = describeLocation(location);
    let theirs = this.otherIndexes.get(label);
    if (!theirs) {
      theirs = this.repositoryFor(location)
        .readIndex()
        .catch(() => undefined);
      this.otherIndexes.set(label, theirs);
    }
    const other = (await theirs)?.get(file);
    return other !== undefined && other.md5 === entry.md5 && (entry.sha256 === undefined || other.sha256 === entry.sha256);
  }
}
