import type { CacheMetrics } from './metrics.js';

/** Bytes served and fetched upstream by the front since it started, at one moment. */
export interface TrafficSample {
  at: number;
  served: number;
  upstream: number;
}

const TRAFFIC_SAMPLE_MS = 60_000;
const TRAFFIC_WINDOW_MS = 3600_000;

async function counterValue(counter: CacheMetrics['servedBytes']): Promise<number> {
  return (await counter.get()).values.reduce((sum, value) => sum + value.value, 0);
}

/**
 * The front's traffic over the last hour, for the frontend's chart: a sample of its byte
 * counters a minute, taken by a timer that does not keep the process alive.
 */
export class TrafficStatistics {
  private readonly samples: TrafficSample[];
  private readonly sampler: NodeJS.Timeout;

  constructor(
    private readonly metrics: CacheMetrics,
    private readonly now: () => number,
  ) {
    // The counters start at 0 with the server (one registry per server).
    this.samples = [{ at: now(), served: 0, upstream: 0 }];
    this.sampler = setInterval(() => {
      void this.record();
    }, TRAFFIC_SAMPLE_MS);
    this.sampler.unref();
  }

  /** Keeps a sample taken now, and forgets those older than the window but one. */
  async record(): Promise<void> {
    const sample = await this.sample();
    this.samples.push(sample);
    // One sample older than the window stays: the baseline of the chart.
    while (this.samples.length > 2 && (this.samples[1]?.at ?? 0) < sample.at - TRAFFIC_WINDOW_MS) this.samples.shift();
  }

  /** The samples kept (the first one the baseline), then one taken now. */
  async withNow(): Promise<TrafficSample[]> {
    return [...this.samples, await this.sample()];
  }

  stop(): void {
    clearInterval(this.sampler);
  }

  private async sample(): Promise<TrafficSample> {
    return { at: this.now(), served: await counterValue(this.metrics.servedBytes), upstream: await counterValue(this.metrics.upstreamBytes) };
  }
}
