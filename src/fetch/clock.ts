import { setTimeout as wait } from 'node:timers/promises';

/**
 * What the fetch policy asks of time and chance: the only place they are read, so cool-down,
 * deadlines and backoff are tested with a clock the test moves.
 */
export interface FetchClock {
  /** Epoch milliseconds. */
  readonly now: () => number;
  /** Resolves after `ms`, or rejects when `signal` aborts first. */
  readonly sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** A number in [0, 1), spreading retries of many clients apart. */
  readonly random: () => number;
}

export const systemClock: FetchClock = {
  now: () => Date.now(),
  sleep: (ms, signal) => wait(ms, undefined, signal === undefined ? {} : { signal }),
  random: () => Math.random(),
};

/** The clock of a fetcher's or a front's options: each part given, or the system's. */
export function clockFrom(given: {
  now?: (() => number) | undefined;
  sleep?: FetchClock['sleep'] | undefined;
  random?: (() => number) | undefined;
}): FetchClock {
  return { now: given.now ?? systemClock.now, sleep: given.sleep ?? systemClock.sleep, random: given.random ?? systemClock.random };
}
