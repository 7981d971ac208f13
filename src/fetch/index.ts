export { PackageFetcher, type DownloadProgress, type FetchedPackage, type FetcherOptions } from './fetch.js';
export { AllRepositoriesFailed } from './errors.js';
export { FetchFailure } from '../repositories/read-failure.js';
export { RepositoryHealth } from './health.js';
export { orderForPackage, rankMembers, rendezvousScore } from './rendezvous.js';
export { openIndexTrust, readKeptIndex } from './kept-indexes.js';
