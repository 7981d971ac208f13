/** Runs `task` once no other runs: see tarTurns. */
export type TarTurns = <T>(bytes: number, task: () => Promise<T>) => Promise<T>;

/**
 * One task at a time (the tar streams are all written on the main thread). The first
 * `headStart` turns go to the smallest task waiting, the others in the order asked for.
 *
 * At the start every compressor waits for its first tar file, and a small one is written in
 * a fraction of a large one's time: the compressors start about 30 ms sooner. After that the
 * order asked for is the packer's, largest first, so that the last files to reach the
 * compressors are small ones and the cores end together; smallest first all along made the
 * last ones large, and one core then finished alone.
 *
 * The first choice waits for the event loop's turn, so that the packages that start together
 * (all waiting for the staging folder) are all there to choose from.
 */
export function tarTurns(headStart: number): TarTurns {
  const waiting: { bytes: number; start: () => void }[] = [];
  let turns = 0;
  let busy = false;
  let choosing = false;
  const choose = (): void => {
    choosing = false;
    if (busy || waiting.length === 0) return;
    let at = 0;
    if (turns < headStart) {
      waiting.forEach((job, i) => {
        if (job.bytes < (waiting[at]?.bytes ?? Infinity)) at = i;
      });
    }
    const [job] = waiting.splice(at, 1);
    turns += 1;
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
