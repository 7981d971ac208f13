// The example client runtime: runs a control file's tests in order.
export function createJob(resultsDir) {
  return { resultsDir, tests: [] };
}
