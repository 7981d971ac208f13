import type { Compression, FetchTls, Location } from '../config/index.js';
import { describeLocation } from '../config/index.js';
import { isTempName } from '../fs/atomic.js';
import { CHECKSUM_FILE, indexProblems, MANIFEST_FILE, SIGNATURE_FILE, parseFileName, parseManifestDocument, type PackageType } from '../packages/index.js';
import { SIGNATURE_NAMESPACE, verifySshsig, type IndexSigning } from '../signing/index.js';
import { createUploadTarget, LOCK_NAME, matchesEntry, type UploadTarget } from '../repositories/index.js';
import { isAutotestError } from '../errors.js';
import { selectSources, type Selection } from './client-tree.js';
import { toFailure } from './failure.js';
import { uploadPackages } from './upload.js';
import { withResources, type Resources } from '../resources.js';

/** 'index': a line or entry of the index that could not be read (left out until --repair rewrites it). */
export type ProblemKind = 'missing' | 'mismatch' | 'unindexed' | 'leftover-temp' | 'index' | 'signature';

export interface Problem {
  file: string;
  kind: ProblemKind;
  detail: string;
}

export interface VerifyLocationReport {
  location: string;
  entries: number;
  problems: Problem[];
  repaired: string[];
  error: { code: string; message: string; hint: string | undefined } | undefined;
}

export interface VerifyOptions {
  locations: Location[];
  repair: boolean;
  /** With --repair: packages the client tree can produce are published again from it. */
  clientDir: string | undefined;
  compression: Compression;
  minimumFreeBytes: number;
  cacheDir?: string;
  /** signing_key: the index is written signed, and --repair signs an index whose signature is wrong. */
  signing?: IndexSigning | undefined;
  /** fetch_ca_file and the client certificate, for an https S3 endpoint. */
  tls?: FetchTls | undefined;
  /**
   * Keys the signature must verify with (trusted_keys, else the public half of signing_key);
   * none: signatures are not checked.
   */
  verifyKeys?: readonly Buffer[] | undefined;
  /** The command's connections; by default the verification's own, closed when it ends. */
  resources?: Resources | undefined;
}

const INDEX_FILES = new Set([CHECKSUM_FILE, MANIFEST_FILE, SIGNATURE_FILE, LOCK_NAME]);

/** What is wrong with a location's signature, as clients would judge it (serials aside), or undefined. */
async function signatureProblem(target: UploadTarget, keys: readonly Buffer[], now: number): Promise<string | undefined> {
  const { manifest, signature } = await target.readSignedPair();
  if (manifest === undefined) return undefined;
  if (signature === undefined) return 'the index is not signed (run "autotest packager sign")';
  const verdict = verifySshsig(signature, Buffer.from(manifest, 'utf8'), SIGNATURE_NAMESPACE, keys);
  if (!verdict.valid) return verdict.why;
  const { expires } = parseManifestDocument(manifest, `${target.name}/${MANIFEST_FILE}`).header;
  if (expires !== undefined && Date.parse(expires) <= now) return `the signed index expired at ${expires} (renew it with "autotest packager sign")`;
  return undefined;
}

async function inspect(
  location: Location,
  options: Pick<VerifyOptions, 'signing' | 'tls' | 'verifyKeys'> & { resources: Resources },
): Promise<VerifyLocationReport> {
  const target = createUploadTarget(location, { signing: options.signing, tls: options.tls, resources: options.resources });
  const report: VerifyLocationReport = { location: describeLocation(location), entries: 0, problems: [], repaired: [], error: undefined };
  const index = await target.readIndex();
  report.entries = index.size;
  for (const problem of indexProblems(index))
    report.problems.push({ file: problem.includes(MANIFEST_FILE) ? MANIFEST_FILE : CHECKSUM_FILE, kind: 'index', detail: problem });
  for (const entry of index.values()) {
    if ((await target.fileSize(entry.file)) === undefined) {
      report.problems.push({ file: entry.file, kind: 'missing', detail: 'listed in the index, no such file' });
      continue;
    }
    const digests = await target.digestFile(entry.file);
    if (!matchesEntry(entry, digests)) {
      report.problems.push({
        file: entry.file,
        kind: 'mismatch',
        detail: `index says ${entry.sha256 ?? entry.md5}${entry.size !== undefined ? ` (${entry.size} bytes)` : ''}, file is ${entry.sha256 ? digests.sha256 : digests.md5} (${digests.size} bytes)`,
      });
    }
  }
  for (const name of await target.listFiles()) {
    if (INDEX_FILES.has(name) || index.has(name)) continue;
    if (isTempName(name)) report.problems.push({ file: name, kind: 'leftover-temp', detail: 'temporary file of an upload' });
    else if (!name.startsWith('.')) report.problems.push({ file: name, kind: 'unindexed', detail: 'file not listed in the index' });
  }
  if (options.verifyKeys) {
    const problem = await signatureProblem(target, options.verifyKeys, Date.now());
    if (problem !== undefined) report.problems.push({ file: SIGNATURE_FILE, kind: 'signature', detail: problem });
  }
  return report;
}

/** The subset of `files` the client tree can produce, as a selection. */
async function producible(clientDir: string, files: string[], compression: Compression): Promise<Selection> {
  const wanted = selectionFor(files.filter((file) => parseFileName(file).compression === compression));
  const keep = async (one: Partial<Selection>): Promise<boolean> => {
    try {
      await selectSources(clientDir, { all: false, tests: [], profilers: [], deps: [], client: false, files: [], ...one }, compression);
      return true;
    } catch (error) {
      if (isAutotestError(error, 'ERR_UNKNOWN_PACKAGE') || isAutotestError(error, 'ERR_CLIENT_TREE')) return false;
      throw error;
    }
  };
  const filter = async (names: string[], key: 'tests' | 'deps' | 'profilers'): Promise<string[]> => {
    const kept: string[] = [];
    for (const name of names) if (await keep({ [key]: [name] })) kept.push(name);
    return kept;
  };
  return {
    ...wanted,
    tests: await filter(wanted.tests, 'tests'),
    deps: await filter(wanted.deps, 'deps'),
    profilers: await filter(wanted.profilers, 'profilers'),
    client: wanted.client && (await keep({ client: true })),
  };
}

function selectionFor(files: string[]): Selection {
  const selection: Selection = { all: false, tests: [], profilers: [], deps: [], client: false, files: [] };
  const lists: Record<Exclude<PackageType, 'client'>, string[]> = { test: selection.tests, dep: selection.deps, profiler: selection.profilers };
  for (const file of files) {
    const parsed = parseFileName(file);
    if (parsed.type === 'client') selection.client = true;
    else if (parsed.type) lists[parsed.type].push(parsed.name);
  }
  return selection;
}

/**
 * `packager verify`: every location must hold exactly its indexed packages, each matching its
 * checksum. `--repair` drops entries whose file is missing or corrupt (and the corrupt file),
 * removes dead uploads' temp files, and publishes again from the client tree whatever it can
 * produce. An unindexed file the tree cannot produce is left in place and reported: repair
 * never deletes what it cannot vouch for nor indexes what it cannot check.
 */
export function verifyLocations(options: VerifyOptions): Promise<VerifyLocationReport[]> {
  return withResources(options.resources, (resources) => verifyWith({ ...options, resources }));
}

async function verifyWith(options: VerifyOptions & { resources: Resources }): Promise<VerifyLocationReport[]> {
  return Promise.all(
    options.locations.map(async (location) => {
      let report: VerifyLocationReport;
      try {
        report = await inspect(location, options);
      } catch (error) {
        return { location: describeLocation(location), entries: 0, problems: [], repaired: [], error: toFailure(error) };
      }
      if (!options.repair || report.problems.length === 0) return report;
      try {
        const target = createUploadTarget(location, { signing: options.signing, tls: options.tls, resources: options.resources });
        report.repaired.push(...(await target.cleanTemps()));
        const bad = report.problems.filter((p) => p.kind === 'missing' || p.kind === 'mismatch').map((p) => p.file);
        // purge rewrites the index under its lock, which also drops the lines it could not read.
        if (bad.length > 0 || report.problems.some((p) => p.kind === 'index')) report.repaired.push(...(await target.purge(bad)));
        let failure: VerifyLocationReport['error'];
        if (options.clientDir !== undefined) {
          const candidates = report.problems.filter((p) => p.kind !== 'leftover-temp' && p.kind !== 'index' && p.kind !== 'signature').map((p) => p.file);
          const selection = await producible(options.clientDir, candidates, options.compression);
          if (selection.client || selection.tests.length + selection.deps.length + selection.profilers.length > 0) {
            const upload = await uploadPackages({
              clientDir: options.clientDir,
              selection,
              locations: [location],
              compression: options.compression,
              minimumFreeBytes: options.minimumFreeBytes,
              signing: options.signing,
              tls: options.tls,
              resources: options.resources,
              ...(options.cacheDir ? { cacheDir: options.cacheDir } : {}),
            });
            report.repaired.push(...(upload.locations[0]?.published ?? []));
            const failed = upload.locations[0]?.error ?? upload.failedPackages[0];
            if (failed) failure = { ...failed, message: `republishing from the client tree failed: ${failed.message}` };
          }
        }
        // Every index write above signed; an index nothing rewrote is signed now.
        if (options.signing && report.problems.some((p) => p.kind === 'signature')) {
          await target.sign();
          report.repaired.push(SIGNATURE_FILE);
        }
        const after = await inspect(location, options);
        return { ...after, repaired: [...new Set(report.repaired)], error: failure };
      } catch (error) {
        return { ...report, error: toFailure(error) };
      }
    }),
  );
}
