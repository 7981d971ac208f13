/**
 * One kind of resource a command or a server keeps for reuse (HTTP keep-alive agents, S3
 * clients and signers, SSH masters, the hashing thread, the server's stream buffers): how to
 * make one, and how to close it. Each kind is declared by the module that uses it, so holding
 * a Resources loads none of those modules: an unchanged `packager upload` starts without the
 * HTTP, S3 and fetch code.
 */
export interface ResourceKind<T> {
  /** For messages. */
  readonly name: string;
  create(): T;
  close(part: T): void | Promise<void>;
}

interface Held {
  kind: ResourceKind<unknown>;
  part: unknown;
}

/**
 * What one command or one server keeps open for reuse, each part made at its first use. The
 * one that creates it closes it (`await resources.close()`), so two servers or two fetchers in
 * one process share connections only when they are given the same object.
 */
export class Resources {
  private readonly held = new Map<ResourceKind<unknown>, Held>();

  /** The part of `kind`, made now if this is its first use. */
  get<T>(kind: ResourceKind<T>): T {
    let held = this.held.get(kind);
    if (!held) {
      held = { kind, part: kind.create() };
      this.held.set(kind, held);
    }
    return held.part as T;
  }

  /**
   * Closes every part made so far, the last made first; the first failure is thrown once all
   * are closed. The object may be used again afterwards: parts are then made afresh.
   */
  async close(): Promise<void> {
    const parts = [...this.held.values()].reverse();
    this.held.clear();
    let failure: { error: unknown } | undefined;
    for (const { kind, part } of parts) {
      try {
        await kind.close(part);
      } catch (error) {
        failure ??= { error };
      }
    }
    if (failure) throw failure.error;
  }
}

/** Runs `work` with `given`, or with resources of its own that are closed when it ends. */
export async function withResources<T>(given: Resources | undefined, work: (resources: Resources) => Promise<T>): Promise<T> {
  if (given) return work(given);
  const own = new Resources();
  try {
    return await work(own);
  } finally {
    await own.close();
  }
}
