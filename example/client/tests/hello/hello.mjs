export async function run() {
  return { keyvals: { greeting: 'hello' } };
}
