export async function run({ seconds = 1 }) {
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  return { keyvals: { slept: seconds } };
}
