/** Runs `task` once no other runs, before the waiting tasks of more bytes. */
export type SmallestFirst = <T>(bytes: number, task: () => Promise<T>) => Promise<T>;

/**
 * One task at a time, the smallest waiting first. The choice waits for the event loop's
 * turn, so that the packages that start together (the first ones, all waiting for the
 * staging folder) are all there to choose from: a compressor waits for its first tar file,
 * and a small one is written in a fraction of a large one's time.
 */
export function smallestFirst(): SmallestFirst {
  const waiting: { bytes: number; start: () => void }[] = [];
  let busy = false;
  let choosing = false;
  const choose = (): void => {
    choosing = false;
    if (busy || waiting.length === 0) return;
    let at = 0;
    waiting.forEach((job, i) => {
      if (job.bytes < (waiting[at]?.bytes ?? Infinity)) at = i;
    });
    const [job] = waiting.splice(at, 1);
    busy = true;
    job?.start();
  };
  const chooseSoon = (): void => {
    if (choosing) return;
    choosing = true;
    setImmediate(choose);
  };
  return <T>(bytes: number, task: () => Promise<T>) =>
    new Promise<T>((resolve, reject) => {
      waiting.push({
        bytes,
        start: () => {
          Promise.resolve()
            .then(task)
            .then(resolve, reject)
            .finally(() => {
              busy = false;
              chooseSoon();
            });
        },
      });
      chooseSoon();
    });
}
