import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { rootCertificates } from 'node:tls';
import { describeLocation, type FetchLocation, type FetchTls, type FetchTrust, type Location } from '../config/index.js';
import { orderForPackage } from '../fetch/rendezvous.js';
import { fetchRepositoryFor } from '../repositories/index.js';
import { withResources, type Resources } from '../resources.js';
import { AutotestError, describeError, errnoCode } from '../errors.js';
import { CLIENT_PACKAGE_NAME, checkName, packageFileName, packEntries } from '../packages/index.js';
import type { Writable } from 'node:stream';
import { packageEntries, selectSources } from '../packager/client-tree.js';
import { createHost, type TestHost } from './host.js';
import { CONTROL_ARGUMENT_LIMIT, hostControlFile, runJobCommand, type JobCommand, type JobOutcome } from './job-command.js';
import { READ_SIGNED_MANIFEST, cannotVerifyReason, hostSerialMemory, sendTrust, type HostTrust } from './host-trust.js';

export interface AutoservOptions {
  hosts: string[];
  control: string;
  resultsDir: string;
  /** fetch_location: what the hosts fetch from (http(s) ones also for the client package). */
  locations: FetchLocation[];
  /** autoserv's own client tree, for the copy ways. */
  clientDir: string;
  /** Folder on each host that holds the client, its package cache and the job's results; "{host}" is replaced by the host's name. */
  hostDir: string;
  onLine?: (host: string, line: string) => void;
  /** Longest a job may run on a host. */
  jobTimeoutMs?: number;
  /** serve_packages_from_autoserv: answer the job's requests for packages no repository has (default true). */
  servePackages?: boolean;
  /** 'auto' (default): packaging, else a light copy, else the full tree; 'full copy': the full tree only, as Autotest without packaging. */
  clientInstall?: 'auto' | 'full copy';
  /**
   * fetch_ca_file (its text, sent to each host) and fetch_client_cert/fetch_client_key (paths
   * on the hosts: labs provision host certificates themselves; a private key is never copied).
   */
  tls?: FetchTls;
  /**
   * trusted_keys and require_signature: sent to each host, whose client install verifies the
   * repository's signature with ssh-keygen (refusing packaging where it cannot) and whose job
   * client verifies every index.
   */
  trust?: FetchTrust | undefined;
  /** The command's SSH masters and connections; by default the run's own, closed when it ends. */
  resources?: Resources | undefined;
  /** false: a new run replaces RESULTS/HOST; else (default) the previous one is kept as RESULTS/HOST.N. */
  keepPrevious?: boolean;
}

export type ClientInstallWay = 'packaging' | 'light copy' | 'full copy';

export interface HostSummary {
  host: string;
  clientInstall: ClientInstallWay | 'failed';
  /** Why the ways before the one used did not work. */
  why: string[];
  status: string;
  tests: { name: string; status: string }[];
  setup: { bytes: number; seconds: number };
  error: string | undefined;
  /** Where this run's results are, and where the previous run's were moved to (none when there was none, or it was replaced). */
  results: string;
  previousResults: string | undefined;
}

/*
 * Run on the host by sh with positional arguments only: $1 the host folder, $2 the CA bundle
 * to trust for https (or empty), $3 and $4 the host's client certificate and key (or empty),
 * $5 the trusted keys file (or empty: unsigned repositories), $6 require_signature (true or
 * false), $7 the node script that reads a verified manifest (READ_SIGNED_MANIFEST), $8 the
 * serial memory file, then each repository's URL and its name in the serial memory. Fetches
 * the client's checksums, then client-autotest.tar.bz2 with curl (or wget), checks it,
 * unpacks it beside the old client and swaps it in. Inside get(), "set --" builds the tool's
 * arguments as a list, so no path is ever split or expanded.
 *
 * With trusted keys, the checksums come from packages.json once `ssh-keygen -Y verify` has
 * accepted packages.json.sig, never from packages.checksum (unsigned). The signature is read
 * before the manifest, and a pair that does not verify is read once more before the
 * repository is judged: a packager replacing both is never taken for a forger.
 */
const INSTALL_BY_PACKAGING = `dir=$1; ca=$2; cert=$3; key=$4; trust=$5; required=$6; js=$7; memory=$8; shift 8
mkdir -p "$dir" || exit 10
get() {
  url=$1; out=$2
  if command -v curl >/dev/null 2>&1; then
    set -- -fsS --connect-timeout 5 --max-time 300 -o "$out"
    if [ -n "$ca" ]; then set -- "$@" --cacert "$ca"; fi
    if [ -n "$cert" ]; then set -- "$@" --cert "$cert" --key "$key"; fi
    curl "$@" "$url"
  else
    set -- -q -T 30 -O "$out"
    if [ -n "$ca" ]; then set -- "$@" --ca-certificate="$ca"; fi
    if [ -n "$cert" ]; then set -- "$@" --certificate="$cert" --private-key="$key"; fi
    wget "$@" "$url"
  fi
}
signed() {
  for attempt in 1 2; do
    rm -f "$dir/.sig.tmp" "$dir/.manifest.tmp"
    if ! get "$base/packages.json.sig" "$dir/.sig.tmp"; then
      if [ "$required" != true ]; then return 2; fi
      problem="cannot fetch packages.json.sig (unsigned?) and require_signature is on"
    elif ! get "$base/packages.json" "$dir/.manifest.tmp"; then problem="cannot fetch packages.json"
    elif ssh-keygen -Y verify -f "$trust" -I autotest -n autotest-packages -s "$dir/.sig.tmp" < "$dir/.manifest.tmp" >/dev/null 2>&1; then
      node -e "$js" "$dir/.manifest.tmp" "$memory" "$name"; return
    else problem="packages.json.sig does not verify with trusted_keys"
    fi
    if [ "$attempt" = 1 ]; then sleep 1; fi
  done
  echo "$problem"; return 1
}
why=""
while [ $# -ge 2 ]; do
  base=$1; name=$2; shift 2
  sum=""; sha=""; size=""
  if [ -n "$trust" ]; then
    sums=$(signed); verdict=$?
    # 2: no signature, which require_signature off allows; anything else but 0 (node missing too) refuses.
    if [ "$verdict" != 0 ] && [ "$verdict" != 2 ]; then why="$why; $base: \${sums:-cannot read its signed packages.json}; not believed"; continue; fi
    if [ "$verdict" = 0 ]; then sum=\${sums%% *}; size=\${sums##* }; sha=\${sums#* }; sha=\${sha%% *}; fi
  fi
  if [ -z "$sum" ]; then
    if ! get "$base/packages.checksum" "$dir/.index.tmp"; then why="$why; $base: cannot fetch packages.checksum"; continue; fi
    sum=$(awk '$2=="client-autotest.tar.bz2" {print $1}' "$dir/.index.tmp")
    if [ -z "$sum" ]; then why="$why; $base: no client package in its index"; continue; fi
  fi
  if [ -f "$dir/client/.checksum" ] && [ "$(cat "$dir/client/.checksum")" = "$sum" ]; then echo "up-to-date 0 $base"; exit 0; fi
  if ! get "$base/client-autotest.tar.bz2" "$dir/.client.tmp"; then why="$why; $base: cannot fetch the client package"; continue; fi
  if [ -n "$sha" ]; then
    if [ "$(wc -c < "$dir/.client.tmp")" -ne "$size" ] || ! echo "$sha  $dir/.client.tmp" | sha256sum -c --status; then rm -f "$dir/.client.tmp"; why="$why; $base: the client package fails the sha256 of its signed packages.json"; continue; fi
  elif ! echo "$sum  $dir/.client.tmp" | md5sum -c --status; then rm -f "$dir/.client.tmp"; why="$why; $base: the client package fails its checksum"; continue; fi
  rm -rf "$dir/.client.new" && mkdir -p "$dir/.client.new"
  if ! tar -xjf "$dir/.client.tmp" -C "$dir/.client.new"; then why="$why; $base: cannot unpack the client package"; continue; fi
  echo "$sum" > "$dir/.client.new/.checksum"
  size=$(wc -c < "$dir/.client.tmp")
  rm -rf "$dir/.client.old"; if [ -d "$dir/client" ]; then mv "$dir/client" "$dir/.client.old"; fi
  mv "$dir/.client.new" "$dir/client" && rm -rf "$dir/.client.old" "$dir/.client.tmp" "$dir/.sig.tmp" "$dir/.manifest.tmp"
  echo "installed $size $base"; exit 0
done
echo "\${why#; }" >&2; exit 3`;

/*
 * $1 the host folder, $2 the md5 of the tarball on standard input: written as the client's
 * .checksum, so that the next job finds this copy warm when autoserv sends the same one.
 */
const UNPACK_COPY = `dir=$1
mkdir -p "$dir" && rm -rf "$dir/.client.new" && mkdir -p "$dir/.client.new" || exit 10
tar -xzf - -C "$dir/.client.new" || exit 11
echo "$2" > "$dir/.client.new/.checksum" || exit 10
rm -rf "$dir/client" && mv "$dir/.client.new" "$dir/client"`;

const sh = (script: string, args: string[]): string[] => ['sh', '-c', script, 'sh', ...args];

/** Where the CA bundle autoserv sends goes on each host. */
const hostCaFile = (hostDir: string): string => path.posix.join(hostDir, 'fetch-ca.pem');

/**
 * fetch_ca_file with the system's roots (Node's list) in front: curl's --cacert and wget's
 * --ca-certificate replace the host's store rather than add to it. Its md5 lets the job
 * command see that a host already holds this very bundle.
 */
function caBundle(tls: FetchTls | undefined): { text: string; md5: string } | undefined {
  const ca = tls?.ca?.pem;
  if (ca === undefined) return undefined;
  const text = `${[...rootCertificates, ca.trim()].join('\n')}\n`;
  return { text, md5: createHash('md5').update(text).digest('hex') };
}

/** Sends the CA bundle to the host: temp name, then rename, so a bundle there is whole. */
async function sendCaBundle(host: TestHost, hostDir: string, bundle: { text: string }): Promise<void> {
  await host.run(['sh', '-c', 'mkdir -p "$1" && cat > "$2.tmp" && mv "$2.tmp" "$2"', 'sh', hostDir, hostCaFile(hostDir)], { input: bundle.text });
}

/** The client job's config on the host: the repositories, the TLS files and the trusted keys, in the ConfigParser dialect. */
function hostConfig(options: AutoservOptions, caFile: string, trust: HostTrust | undefined): string {
  // '%' starts an interpolation in ConfigParser; paths and URLs have no line breaks (config checks refuse them).
  const value = (text: string): string => text.replaceAll('%', '%%');
  const lines = ['[PACKAGES]', `fetch_location: ${options.locations.map((l) => value(l.text)).join(', ')}`];
  if (caFile !== '') lines.push(`fetch_ca_file: ${value(caFile)}`);
  const { clientCert, clientKey } = options.tls ?? {};
  if (clientCert && clientKey) lines.push(`fetch_client_cert: ${value(clientCert.file)}`, `fetch_client_key: ${value(clientKey.file)}`);
  if (trust) lines.push(`trusted_keys: ${value(trust.trustedKeys)}`, `require_signature: ${String(trust.required)}`);
  return `${lines.join('\n')}\n`;
}

/** The http(s) repositories in the order the client itself takes for the client package: every host asks the same front first. */
function clientPackageUrls(locations: readonly FetchLocation[]): Extract<Location, { kind: 'http' }>[] {
  return orderForPackage(locations, packageFileName('client', CLIENT_PACKAGE_NAME, 'bzip2')).filter(
    (l): l is Extract<Location, { kind: 'http' }> => l.kind === 'http',
  );
}

/**
 * The client package's md5 in the first of those repositories that lists it, read once per
 * run: a host whose client carries it is warm. Undefined when none answers (a host then goes
 * the cold way, which says why).
 */
async function readClientMd5(options: AutoservOptions & { resources: Resources }): Promise<string | undefined> {
  const file = packageFileName('client', CLIENT_PACKAGE_NAME, 'bzip2');
  const settings = { connectTimeoutMs: 5000, timeoutMs: 30_000, retries: 0, cooldownMs: 0, maxSizeBytes: 0, ...(options.tls ? { tls: options.tls } : {}) };
  for (const location of clientPackageUrls(options.locations)) {
    const entry = await fetchRepositoryFor(location, settings, options.resources)
      .readIndex()
      .then(
        (index) => index.get(file),
        () => undefined,
      );
    if (entry) return entry.md5;
  }
  return undefined;
}

type CopyWay = Exclude<ClientInstallWay, 'packaging'>;

/** The client trees autoserv copies, each packed at most once per run whatever the number of hosts. */
function createClientCopies(clientDir: string, work: string): (way: CopyWay) => Promise<{ file: string; md5: string; size: number }> {
  const packed = new Map<CopyWay, Promise<{ file: string; md5: string; size: number }>>();
  return (way) => {
    let copy = packed.get(way);
    if (!copy) {
      const file = path.join(work, `client-${way === 'light copy' ? 'light' : 'full'}.tar.gz`);
      const source = { type: 'client' as const, name: CLIENT_PACKAGE_NAME, root: clientDir, fileName: 'client.tar.gz' };
      copy = packageEntries(source, { fullTree: way === 'full copy' })
        .then((entries) => packEntries(entries, file, 'gzip'))
        .then((result) => ({ file, md5: result.md5, size: result.size }));
      packed.set(way, copy);
    }
    return copy;
  };
}

/** Puts the client on the host the cold way: through packaging, else a light copy, else the full tree; says which and why. */
async function installClient(host: TestHost, options: AutoservOptions, summary: HostSummary, run: RunShared, trust: HostTrust | undefined): Promise<void> {
  const caFile = run.ca === undefined ? '' : hostCaFile(options.hostDir);
  const repositories = clientPackageUrls(options.locations);
  const ways = options.clientInstall === 'full copy' ? (['full copy'] as const) : (['light copy', 'full copy'] as const);
  if (options.clientInstall === 'full copy') summary.why.push('packaging: not asked for (--client-install full)');
  else if (trust?.cannotVerify !== undefined) summary.why.push(`packaging: ${cannotVerifyReason(trust)}`);
  else if (repositories.length > 0) {
    const tlsArgs = [caFile, options.tls?.clientCert?.file ?? '', options.tls?.clientKey?.file ?? ''];
    const trustArgs = [trust?.trustedKeys ?? '', String(trust?.required ?? false), READ_SIGNED_MANIFEST, hostSerialMemory(options.hostDir)];
    const urls = repositories.flatMap((l) => [l.url, describeLocation(l)]);
    const answer = await host.run(sh(INSTALL_BY_PACKAGING, [options.hostDir, ...tlsArgs, ...trustArgs, ...urls]), { allowCodes: [3, 10], timeoutMs: 600_000 });
    if (answer.code === 0) {
      summary.clientInstall = 'packaging';
      summary.setup.bytes += Number(answer.stdout.trim().split(' ')[1] ?? 0);
      return;
    }
    summary.why.push(`packaging: ${answer.stderr || `exit code ${answer.code.toString()}`}`);
  } else summary.why.push('packaging: no http(s) repository in fetch_location');
  for (const way of ways) {
    try {
      const copy = await run.copies(way);
      await host.run(sh(UNPACK_COPY, [options.hostDir, copy.md5]), { input: createReadStream(copy.file), timeoutMs: 600_000 });
      summary.clientInstall = way;
      summary.setup.bytes += copy.size;
      return;
    } catch (error) {
      summary.why.push(`${way}: ${describeError(error)}`);
    }
  }
  throw new AutotestError('ERR_CLIENT_INSTALL', `the client could not be installed: ${summary.why.join('; ')}`, {
    hint: 'each way tried says why it failed; a light or full copy needs room and a writable --host-dir on the host',
  });
}

/**
 * autoserv's end of the channel: a request names a type and a package; anything that is not
 * a test, dep or profiler with a valid name is refused with a reason. The package is packed
 * from autoserv's own client tree and sent as a JSON header (size, md5, sha256) and the bytes.
 */
export async function answerPackageRequest(payload: string, clientDir: string, work: string, stdin: Writable): Promise<void> {
  let id = 0;
  const refuse = (why: string): void => {
    stdin.write(`${JSON.stringify({ id, error: why })}\n`);
  };
  try {
    const request = JSON.parse(payload) as { id?: unknown; type?: unknown; name?: unknown };
    id = typeof request.id === 'number' && Number.isSafeInteger(request.id) ? request.id : 0;
    if (request.type !== 'test' && request.type !== 'dep' && request.type !== 'profiler') {
      refuse(`type ${JSON.stringify(request.type)}: only test, dep or profiler`);
      return;
    }
    if (typeof request.name !== 'string') {
      refuse('no package name');
      return;
    }
    const name = checkName(request.name, request.type);
    const selection = {
      all: false,
      tests: request.type === 'test' ? [name] : [],
      deps: request.type === 'dep' ? [name] : [],
      profilers: request.type === 'profiler' ? [name] : [],
      client: false,
      files: [],
    };
    const [source] = await selectSources(clientDir, selection, 'bzip2');
    if (!source) {
      refuse(`${request.type} ${name}: not in autoserv's client tree`);
      return;
    }
    const tarball = path.join(work, `${randomBytes(4).toString('hex')}-${source.fileName}`);
    const packed = await packEntries(await packageEntries(source), tarball, 'bzip2');
    stdin.write(`${JSON.stringify({ id, file: source.fileName, size: packed.size, md5: packed.md5, sha256: packed.sha256 })}\n`);
    await new Promise<void>((resolve, reject) => {
      const file = createReadStream(tarball);
      file.on('error', reject);
      file.on('end', resolve);
      file.pipe(stdin, { end: false });
    });
    await rm(tarball, { force: true });
  } catch (error) {
    refuse(describeError(error));
  }
}

interface JobReportText {
  status: string;
  tests: { name: string; status: string }[];
  transfers: { seconds: number }[];
  totals: { bytes: number; waitSeconds?: number };
}

/** The job's report: its whole standard output (a client from before status lines went to stderr printed them first). */
function readReport(stdout: string): JobReportText | undefined {
  // Not found, indexOf's -1 makes 0: the whole output, which then does not parse.
  const start = stdout.startsWith('{') ? 0 : stdout.indexOf('\n{\n') + 1;
  try {
    return JSON.parse(stdout.slice(start)) as JobReportText;
  } catch {
    return undefined;
  }
}

/** Moves `dir` aside to the first free `dir.N`; returns where, or undefined when there was nothing. */
async function keepAside(dir: string): Promise<string | undefined> {
  if (!(await stat(dir).catch(() => undefined))) return undefined;
  for (let n = 1; ; n += 1) {
    const aside = `${dir}.${n.toString()}`;
    if (await stat(aside).catch(() => undefined)) continue;
    await rename(dir, aside);
    return aside;
  }
}

/** What every host of a run shares: the job, what a warm host's client must carry, the packed copies. */
interface RunShared {
  jobId: string;
  control: Buffer;
  /** The md5 a warm host's client/.checksum holds, and the way that put it there. */
  warm: Promise<{ md5: string; way: ClientInstallWay } | undefined>;
  ca: { text: string; md5: string } | undefined;
  copies: ReturnType<typeof createClientCopies>;
  work: string;
}

/** The control file, sent to the host ahead when it is too large for a command argument (then undefined: the job reads it there). */
async function sendLargeControl(host: TestHost, hostDir: string, run: RunShared): Promise<Buffer | undefined> {
  if (run.control.toString('base64').length <= CONTROL_ARGUMENT_LIMIT) return run.control;
  await host.run(['sh', '-c', 'mkdir -p "$1" && cat > "$2"', 'sh', hostDir, hostControlFile(hostDir, run.jobId)], { input: run.control });
  return undefined;
}

/** Fills a host's summary from the job's outcome: its status, tests and setup cost, or why it left no report. */
function noteJobOutcome(summary: HostSummary, outcome: Exclude<JobOutcome, { kind: 'stale' }>, started: number): void {
  // Setup: from the start to the job's start on the host (client check or install, control file and config), then getting (or checking) every package the job named.
  summary.setup.seconds = ((outcome.readyAt ?? performance.now()) - started) / 1000;
  const report = readReport(outcome.report);
  if (report) {
    summary.status = report.status;
    summary.tests = report.tests.map((t) => ({ name: t.name, status: t.status }));
    summary.setup.bytes += report.totals.bytes;
    // The job's own wall time waiting on packages (those fetched ahead overlap); a client from before waitSeconds: their sum.
    summary.setup.seconds += report.totals.waitSeconds ?? report.transfers.reduce((sum, t) => sum + t.seconds, 0);
  } else summary.error = `the job ended without a report (exit code ${outcome.code.toString()})${outcome.stderr ? `: ${outcome.stderr}` : ''}`;
}

/** RESULTS/HOST made ready (the previous run's kept as HOST.N unless --overwrite), and the host's summary so far. */
async function startHostResults(text: string, options: AutoservOptions): Promise<HostSummary> {
  const hostResults = path.join(options.resultsDir, text.replace(/[^A-Za-z0-9._@-]/g, '_'));
  let previousResults: string | undefined;
  if (options.keepPrevious === false) await rm(hostResults, { recursive: true, force: true });
  else previousResults = await keepAside(hostResults);
  await mkdir(hostResults, { recursive: true });
  return {
    host: text,
    clientInstall: 'failed',
    why: [],
    status: 'ABORT',
    tests: [],
    setup: { bytes: 0, seconds: 0 },
    error: undefined,
    results: hostResults,
    previousResults,
  };
}

async function runOnHost(text: string, shared: AutoservOptions & { resources: Resources }, run: RunShared): Promise<HostSummary> {
  const started = performance.now();
  // "{host}" in the host folder: hosts that share a filesystem (test namespaces) keep apart.
  const options = { ...shared, hostDir: shared.hostDir.replaceAll('{host}', text.replace(/[^A-Za-z0-9._-]/g, '_')) };
  const summary = await startHostResults(text, options);
  const hostResults = summary.results;
  const work = await mkdtemp(path.join(run.work, 'host-'));
  try {
    const host = createHost(text, options.resources);
    const caFile = run.ca === undefined ? '' : hostCaFile(options.hostDir);
    // With trusted_keys, the keys go first (one command), so a warm host costs two in all.
    const trust = await sendTrust(host, options.hostDir, options.trust);
    const control = await sendLargeControl(host, options.hostDir, run);
    const servePackages = options.servePackages !== false;
    // With trusted_keys the client install runs every time: the host verifies the signed index
    // itself (and remembers its serial), which the warm check's md5 from autoserv cannot replace.
    const warm = options.trust?.keys ? undefined : await run.warm;
    const command: JobCommand = {
      hostDir: options.hostDir,
      jobId: run.jobId,
      clientMd5: warm?.md5,
      ca: run.ca === undefined ? undefined : { file: caFile, md5: run.ca.md5 },
      control,
      ini: hostConfig(options, caFile, trust),
      answer: servePackages ? (payload, stdin) => answerPackageRequest(payload, options.clientDir, work, stdin) : undefined,
      resultsDir: hostResults,
      onLine: (line) => options.onLine?.(text, line),
      timeoutMs: options.jobTimeoutMs ?? 3_600_000,
    };
    // Warm: one command, the job itself. Cold (or no checksum to check against): install, then the job.
    let outcome: JobOutcome = { kind: 'stale' };
    if (warm) {
      outcome = await runJobCommand(host, command);
      if (outcome.kind === 'ran') summary.clientInstall = warm.way;
    }
    if (outcome.kind === 'stale') {
      if (run.ca) await sendCaBundle(host, options.hostDir, run.ca);
      await installClient(host, options, summary, run, trust);
      outcome = await runJobCommand(host, { ...command, clientMd5: undefined });
      if (outcome.kind === 'stale') throw new AutotestError('ERR_SSH', `${text}: the CA bundle sent to ${caFile} is not there or not whole`);
    }
    noteJobOutcome(summary, outcome, started);
  } catch (error) {
    summary.error = describeError(error);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  await writeFile(path.join(hostResults, 'summary.json'), `${JSON.stringify(summary, null, 2)}\n`);
  return summary;
}

async function readControl(file: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (error) {
    const code = errnoCode(error);
    throw new AutotestError(
      'ERR_CONTROL_FILE',
      `control file ${file}: ${code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'a folder, not a file' : describeError(error)}`,
      {
        hint: "give the path of an ES module control file, such as example/jobs/example.control.mjs (Autotest's Python control files are not run)",
        cause: error,
      },
    );
  }
}

/**
 * `autoserv -m HOSTS CONTROL`: on every host at once, puts the client there (through
 * packaging, else a light copy, else the full tree; saying which and why), runs the control
 * file with the repositories, streams its status lines and brings its results back into
 * RESULTS/HOST with a summary.
 */
export function runAutoserv(options: AutoservOptions): Promise<HostSummary[]> {
  return withResources(options.resources, (resources) => runAutoservWith({ ...options, resources }));
}

async function runAutoservWith(options: AutoservOptions & { resources: Resources }): Promise<HostSummary[]> {
  const jobId = `${new Date().toISOString().replace(/[:.]/g, '-')}-${randomBytes(3).toString('hex')}`;
  // Read before any host is touched: a wrong path must not cost a client install on every host.
  const control = await readControl(options.control);
  await mkdir(options.resultsDir, { recursive: true });
  const work = await mkdtemp(path.join(tmpdir(), 'autotest-autoserv-'));
  try {
    const copies = createClientCopies(options.clientDir, work);
    // What a warm host's client carries: the repositories' client package, or the tree copied without packaging.
    const warm =
      options.clientInstall === 'full copy'
        ? copies('full copy').then(
            (copy) => ({ md5: copy.md5, way: 'full copy' as const }),
            () => undefined,
          )
        : readClientMd5(options).then((md5) => (md5 === undefined ? undefined : { md5, way: 'packaging' as const }));
    const shared: RunShared = { jobId, control, warm, ca: caBundle(options.tls), copies, work };
    const summaries = await Promise.all(options.hosts.map((host) => runOnHost(host, options, shared)));
    await writeFile(path.join(options.resultsDir, 'summary.json'), `${JSON.stringify(summaries, null, 2)}\n`);
    return summaries;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
