import http from 'node:http';
import https from 'node:https';
import { rootCertificates } from 'node:tls';
import type { FetchTls } from '../../config/index.js';
import { closeWhenDone } from '../../connections.js';

const httpAgent = new http.Agent({ keepAlive: true });
/** One HTTPS agent per set of TLS files (in practice one per process); '' is the system's CAs alone. */
const httpsAgents = new Map<string, https.Agent>();

function httpsAgent(tls: FetchTls | undefined): https.Agent {
  const ca = tls?.ca?.pem;
  const cert = tls?.clientCert?.pem;
  const key = tls?.clientKey?.pem;
  if ((tls?.ca && ca === undefined) || (tls?.clientCert && (cert === undefined || key === undefined))) {
    throw new Error('fetch TLS files used before readTlsFiles read them');
  }
  const id = ca === undefined && cert === undefined ? '' : JSON.stringify([ca, cert, key]);
  let agent = httpsAgents.get(id);
  if (!agent) {
    // `ca` replaces Node's list: the system's roots go in with the lab's CA so public
    // repositories (and AWS) stay trusted.
    agent = new https.Agent({
      keepAlive: true,
      ...(ca === undefined ? {} : { ca: [...rootCertificates, ca] }),
      ...(cert === undefined || key === undefined ? {} : { cert, key }),
    });
    httpsAgents.set(id, agent);
  }
  return agent;
}

/**
 * The kept-alive agent for a URL, shared by every repository read of the process (and the
 * server's S3 proxy); an https one trusts fetch_ca_file and presents fetch_client_cert.
 */
export function agentFor(url: URL, tls?: FetchTls): http.Agent {
  return url.protocol === 'https:' ? httpsAgent(tls) : httpAgent;
}

/** Closes the kept-alive connections, so a command ends as soon as its work is done. */
export function closeHttpConnections(): void {
  httpAgent.destroy();
  for (const agent of httpsAgents.values()) agent.destroy();
  httpsAgents.clear();
}

closeWhenDone(closeHttpConnections);

