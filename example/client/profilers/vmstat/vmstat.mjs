// Runs vmstat for the length of each test and keeps its output in the test's results.
export function start() { return { command: ['vmstat', '1'] }; }
export function stop() { return {}; }
