/** The compressions a package can be written with; the config names one (compression in [PACKAGES]). */
export type Compression = 'bzip2' | 'gzip' | 'zstd';
export const COMPRESSIONS: readonly Compression[] = ['bzip2', 'gzip', 'zstd'];
