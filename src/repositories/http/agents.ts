import http from 'node:http';
import https from 'node:https';
import { rootCertificates } from 'node:tls';
import type { FetchTls } from '../../config/index.js';
import type { ResourceKind } from '../../resources.js';

/**
 * The kept-alive agents of one owner (a command, a server): shared by every repository read
 * it makes; an https one trusts fetch_ca_file and presents fetch_client_cert.
 */
export class HttpAgents {
  readonly httpAgent = new http.Agent({ keepAlive: true });
  /** One HTTPS agent per set of TLS files (in practice one); '' is the system's CAs alone. */
  private readonly httpsAgents = new Map<string, https.Agent>();

  /** The agent for a URL. */
  agentFor(url: URL, tls?: FetchTls): http.Agent {
    return url.protocol === 'https:' ? this.httpsAgent(tls) : this.httpAgent;
  }

  /** The agent for https URLs: trusts fetch_ca_file besides the system's roots and presents fetch_client_cert. */
  httpsAgent(tls: FetchTls | undefined): https.Agent {
    const ca = tls?.ca?.pem;
    const cert = tls?.clientCert?.pem;
    const key = tls?.clientKey?.pem;
    if ((tls?.ca && ca === undefined) || (tls?.clientCert && (cert === undefined || key === undefined))) {
      throw new Error('fetch TLS files used before readTlsFiles read them');
    }
    const id = ca === undefined && cert === undefined ? '' : JSON.stringify([ca, cert, key]);
    let agent = this.httpsAgents.get(id);
    if (!agent) {
      // `ca` replaces Node's list: the system's roots go in with the lab's CA so public
      // repositories (and AWS) stay trusted.
      agent = new https.Agent({
        keepAlive: true,
        ...(ca === undefined ? {} : { ca: [...rootCertificates, ca] }),
        ...(cert === undefined || key === undefined ? {} : { cert, key }),
      });
      this.httpsAgents.set(id, agent);
    }
    return agent;
  }

  /** Closes the kept-alive connections, so a command ends as soon as its work is done. */
  close(): void {
    this.httpAgent.destroy();
    for (const agent of this.httpsAgents.values()) agent.destroy();
    this.httpsAgents.clear();
  }
}

export const HTTP_AGENTS: ResourceKind<HttpAgents> = {
  name: 'HTTP keep-alive agents',
  create: () => new HttpAgents(),
  close: (agents) => {
    agents.close();
  },
};
