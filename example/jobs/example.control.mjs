// The example job: two tests with one dep and one profiler. Every package it names is
// installed on demand from the repositories (fetch_location) the first time, then reused.
export default async (job) => {
  await job.setupDep(['libaio']);
  await job.profilers.add('vmstat');
  await job.runTest('sleeptest', { seconds: 1 });
  await job.runTest('dbench', { seconds: 1 });
  job.profilers.remove('vmstat');
};
