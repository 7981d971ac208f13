export type Compression = 'bzip2' | 'gzip' | 'zstd';
export const COMPRESSIONS: readonly Compression[] = ['bzip2', 'gzip', 'zstd'];
