export { answerPackageRequest, runAutoserv, type AutoservOptions, type HostSummary, type ClientInstallWay } from './autoserv.js';
export { parseHost } from './host.js';
