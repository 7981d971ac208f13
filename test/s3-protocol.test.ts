import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import { AutotestError } from '../src/errors.js';
import { isTempName } from '../src/fs/atomic.js';
import {
  CHECKSUM_FILE,
  MANIFEST_FILE,
  SIGNATURE_FILE,
  formatChecksumFile,
  parseManifest,
  type IndexEntry,
  type RepositoryIndex,
} from '../src/packages/index.js';
import { IndexProtocol } from '../src/repositories/s3/index-protocol.js';
import type { StagedFile } from '../src/repositories/types.js';
import { digestsOf, gatedStore, MemoryStore } from './s3-memory-store.js';

const NAMES = ['test-alpha.tar.bz2', 'dep-beta.tar.bz2', 'profiler-gamma.tar.bz2'];
/** The packager that fills the prefix before the others start, when a scenario asks for it. */
const SETUP = 9;
const MAX_STEPS = 20_000;

interface OperationPlan {
  kind: 'upload' | 'remove';
  files: string[];
}

interface PackagerPlan {
  operations: OperationPlan[];
  /** The store call (counted from 0) at which this packager is killed: it never makes it, nor any after. */
  killAtCall: number | undefined;
}

interface Scenario {
  prefilled: boolean;
  packagers: PackagerPlan[];
  /** Which waiting store call goes next, at each step (modulo how many wait; the first once used up). */
  choices: number[];
}

/** One upload or removal by one packager, as it went. */
interface OperationRecord {
  packager: number;
  kind: 'upload' | 'remove';
  /** The files it writes: those it stages, or those present that it removes. */
  files: string[];
  /** Steps (store calls let through so far) when it began and when it returned, threw or was killed. */
  start: number;
  end: number | undefined;
  killed: boolean;
  error: unknown;
  finished: boolean;
}

/** Which packager's store call goes next; a killed packager's calls are never let through. */
class Interleaving {
  steps = 0;
  readonly trace: string[] = [];
  private readonly waiting: { packager: number; what: string; go: () => void }[] = [];
  private readonly callsMade = new Map<number, number>();
  readonly killed = new Set<number>();

  gateOf(packager: number): (what: string) => Promise<void> {
    return (what) =>
      new Promise((resolve) => {
        if (!this.killed.has(packager)) this.waiting.push({ packager, what, go: resolve });
      });
  }

  get anyWaiting(): boolean {
    return this.waiting.length > 0;
  }

  /** Lets one waiting call through, or kills its packager when its plan says so; returns the packager killed, if any. */
  advance(choice: number, killAtCall: (packager: number) => number | undefined): number | undefined {
    const [next] = this.waiting.splice(choice % this.waiting.length, 1);
    if (!next) return undefined;
    const made = this.callsMade.get(next.packager) ?? 0;
    if (killAtCall(next.packager) === made) {
      this.killed.add(next.packager);
      this.trace.push(`${this.steps.toString()}: packager ${next.packager.toString()} killed before ${next.what}`);
      this.waiting.splice(0, this.waiting.length, ...this.waiting.filter((call) => call.packager !== next.packager));
      return next.packager;
    }
    this.callsMade.set(next.packager, made + 1);
    this.steps += 1;
    this.trace.push(`${this.steps.toString()}: packager ${next.packager.toString()} ${next.what}`);
    next.go();
    return undefined;
  }
}

/** Lets every packager let through run until it waits for its next store call or ends (no I/O, no timers: microtasks only). */
async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
}

const describe = (error: unknown): string => (error instanceof Error ? error.message : JSON.stringify(error));
const tempNameOf = (packager: number, operation: number, file: string): string => `.tmp.p${packager.toString()}.o${operation.toString()}.${file}`;
const packagerOfTemp = (name: string): number => Number(/^\.tmp\.p(\d+)\./.exec(name)?.[1] ?? -1);

/** The shared prefix, the packagers' history, and the invariants checked on them. */
class World {
  readonly store = new MemoryStore();
  readonly interleaving = new Interleaving();
  readonly records: OperationRecord[] = [];
  /** The operation that wrote each upload's bytes (all bytes differ), by md5. */
  readonly writerOf = new Map<string, { record: OperationRecord; file: string }>();
  private readonly current = new Map<number, OperationRecord>();

  protocolFor(packager: number, operation: number, gate: (what: string) => Promise<void>): IndexProtocol {
    return new IndexProtocol(gatedStore(this.store, gate), {
      pause: () => Promise.resolve(),
      tempNameFor: (file) => tempNameOf(packager, operation, file),
      isDeadTemp: (name) => this.interleaving.killed.has(packagerOfTemp(name)),
    });
  }

  async runPackager(packager: number, plan: PackagerPlan, gate: (what: string) => Promise<void>): Promise<void> {
    for (const [operation, { kind, files }] of plan.operations.entries()) {
      const record: OperationRecord = {
        packager,
        kind,
        files: [...files],
        start: this.interleaving.steps,
        end: undefined,
        killed: false,
        error: undefined,
        finished: false,
      };
      this.records.push(record);
      this.current.set(packager, record);
      const protocol = this.protocolFor(packager, operation, gate);
      try {
        if (kind === 'upload') await this.upload(protocol, record, operation);
        else await this.remove(protocol, record);
      } catch (error) {
        record.error = error;
      }
      record.end = this.interleaving.steps;
      record.finished = true;
    }
  }

  /** As the packager's upload does: temps of the dead cleaned, index read, files staged, one commit; what is staged is discarded on failure. */
  private async upload(protocol: IndexProtocol, record: OperationRecord, operation: number): Promise<void> {
    await protocol.cleanTemps();
    await protocol.readIndex();
    const adds: { entry: IndexEntry; staged: StagedFile }[] = [];
    try {
      for (const file of record.files) {
        const bytes = Buffer.from(`${file} uploaded by packager ${record.packager.toString()} in its operation ${operation.toString()}\n`);
        const sourcePath = `p${record.packager.toString()}/o${operation.toString()}/${file}`;
        this.store.sources.set(sourcePath, bytes);
        const entry: IndexEntry = { file, ...digestsOf(bytes), publishedAt: new Date(Date.UTC(2025, 0, 1, 0, 0, this.records.length)).toISOString() };
        this.writerOf.set(entry.md5, { record, file });
        adds.push({ entry, staged: await protocol.stage(file, { path: sourcePath, size: bytes.length }) });
      }
      await protocol.commit({ add: adds, refresh: [], remove: [] });
    } catch (error) {
      await protocol.discard(adds.map(({ staged }) => staged));
      throw error;
    }
  }

  /** As the packager's remove does: the files the index has, in one commit. */
  private async remove(protocol: IndexProtocol, record: OperationRecord): Promise<void> {
    const index = await protocol.readIndex();
    record.files = record.files.filter((file) => index.has(file));
    if (record.files.length > 0) await protocol.commit({ add: [], refresh: [], remove: record.files });
  }

  killed(packager: number): void {
    const record = this.current.get(packager);
    if (record && !record.finished) {
      record.end = this.interleaving.steps;
      record.killed = true;
    }
  }

  /** Whether another packager wrote `file` while `record` ran (a running operation runs until now). */
  contested(file: string, record: OperationRecord): boolean {
    const endOf = (r: OperationRecord): number => r.end ?? this.interleaving.steps;
    return this.records.some(
      (other) => other.packager !== record.packager && other.files.includes(file) && other.start < endOf(record) && record.start < endOf(other),
    );
  }

  index(): RepositoryIndex {
    const manifest = this.store.objects.get(MANIFEST_FILE);
    return manifest ? parseManifest(manifest.bytes.toString('utf8'), MANIFEST_FILE) : new Map<string, IndexEntry>();
  }

  private fail(why: string): never {
    assert.fail(`${why}\n${this.interleaving.trace.slice(-60).join('\n')}`);
  }

  /**
   * After every step: each entry of packages.json names a package (never a temp) and one
   * upload's bytes; the object under its name is those bytes, unless another packager wrote
   * the same file while that upload ran (the race S3 cannot close without conditional copies
   * and deletes): then the object is missing or is another whole upload of the same file, so
   * a fetcher's md5/sha256/size check refuses it.
   */
  checkStep(): void {
    for (const [file, entry] of this.index()) {
      if (!NAMES.includes(file)) this.fail(`packages.json names ${file}`);
      const writer = this.writerOf.get(entry.md5);
      if (writer?.file !== file) this.fail(`the entry of ${file} names bytes nobody uploaded as ${file}`);
      const object = this.store.objects.get(file);
      const digests = object && digestsOf(object.bytes);
      if (digests && digests.md5 === entry.md5 && digests.sha256 === entry.sha256 && digests.size === entry.size) continue;
      if (!this.contested(file, writer.record)) {
        this.fail(
          `${file} is indexed with the bytes of packager ${writer.record.packager.toString()}, uncontested, but its object ${object ? 'holds other bytes' : 'is missing'}`,
        );
      }
      if (digests && this.writerOf.get(digests.md5)?.file !== file) this.fail(`${file} holds bytes that are no upload of ${file}`);
    }
  }

  /** When every packager has ended or been killed: see the test's name. */
  async checkQuiescent(): Promise<void> {
    const index = this.index();
    for (const record of this.records) {
      const uncontested = record.files.every((file) => !this.contested(file, record));
      if (record.finished && uncontested && record.error !== undefined)
        this.fail(`an uncontested ${record.kind} of packager ${record.packager.toString()} failed: ${describe(record.error)}`);
      if (record.error !== undefined && !(record.error instanceof AutotestError)) this.fail(`a plain error escaped: ${describe(record.error)}`);
    }
    for (const file of NAMES) this.checkLastWriterWins(file, index);
    this.checkSettled(index);
    const checksums = (): string | undefined => this.store.objects.get(CHECKSUM_FILE)?.bytes.toString('utf8');
    if (this.interleaving.killed.size === 0 && this.store.objects.has(MANIFEST_FILE)) {
      assert.equal(checksums(), formatChecksumFile(index), 'packages.checksum follows packages.json once every packager has finished');
    }
    assert.equal(this.store.objects.has(SIGNATURE_FILE), false);
    for (const file of this.store.objects.keys()) {
      if (isTempName(file) && !this.interleaving.killed.has(packagerOfTemp(file))) this.fail(`${file} is left by a packager that was not killed`);
    }
    // The next packager's run: dead temps cleaned, and an empty commit brings packages.checksum up to date.
    const next = this.protocolFor(SETUP + 1, 0, () => Promise.resolve());
    await next.cleanTemps();
    await next.commit({ add: [], refresh: [], remove: [] });
    assert.deepEqual([...this.store.objects.keys()].filter(isTempName), [], 'cleanTemps removes the temps of killed packagers');
    if (this.store.objects.has(MANIFEST_FILE))
      assert.equal(checksums(), formatChecksumFile(this.index()), 'packages.checksum follows packages.json after the next run');
  }

  /**
   * A file no killed packager wrote is indexed with its bytes once every writer has finished,
   * contested or not: the race window closes when the last writer ends. (A packager killed
   * after moving its bytes into place and before indexing them leaves another's entry on
   * them: that stays until the next write of the file, and fetchers refuse the bytes.)
   */
  private checkSettled(index: RepositoryIndex): void {
    for (const [file, entry] of index) {
      if (this.records.some((record) => record.killed && record.files.includes(file))) continue;
      const object = this.store.objects.get(file);
      if (!object || digestsOf(object.bytes).md5 !== entry.md5)
        this.fail(`${file}: no packager writing it was killed, yet once all have finished its entry names ${object ? 'other bytes' : 'a missing object'}`);
    }
  }

  /** The last operation on a file, when it finished and nobody wrote the file meanwhile, decides what the index says of it. */
  private checkLastWriterWins(file: string, index: RepositoryIndex): void {
    const last = this.records.filter((record) => record.files.includes(file)).at(-1);
    if (!last?.finished || this.contested(file, last)) return;
    const object = this.store.objects.get(file);
    if (last.kind === 'remove') {
      if (index.has(file) || object)
        this.fail(`${file} was removed last by packager ${last.packager.toString()}, uncontested, but is still ${index.has(file) ? 'indexed' : 'there'}`);
      return;
    }
    const entry = index.get(file);
    if (!entry || this.writerOf.get(entry.md5)?.record !== last)
      this.fail(`the upload of ${file} by packager ${last.packager.toString()}, last and uncontested, is not what the index says`);
    if (!object || digestsOf(object.bytes).md5 !== entry.md5)
      this.fail(`the upload of ${file} by packager ${last.packager.toString()}, last and uncontested, is not in its object`);
  }
}

async function runScenario(scenario: Scenario): Promise<void> {
  const world = new World();
  if (scenario.prefilled) await world.runPackager(SETUP, { operations: [{ kind: 'upload', files: NAMES }], killAtCall: undefined }, () => Promise.resolve());
  const { interleaving } = world;
  scenario.packagers.forEach((plan, packager) => void world.runPackager(packager, plan, interleaving.gateOf(packager)));
  for (let choice = 0; ; choice++) {
    await settle();
    world.checkStep();
    if (!interleaving.anyWaiting) break;
    if (interleaving.steps > MAX_STEPS) assert.fail(`no end after ${MAX_STEPS.toString()} store calls`);
    const killed = interleaving.advance(scenario.choices[choice] ?? 0, (packager) => scenario.packagers[packager]?.killAtCall);
    if (killed !== undefined) world.killed(killed);
  }
  await world.checkQuiescent();
}

const operation = fc.record({
  kind: fc.constantFrom<'upload' | 'remove'>('upload', 'upload', 'remove'),
  files: fc.uniqueArray(fc.constantFrom(...NAMES), { minLength: 1, maxLength: 2 }),
});
const packager = fc.record({
  operations: fc.array(operation, { minLength: 1, maxLength: 3 }),
  killAtCall: fc.oneof(fc.constant(undefined), fc.nat({ max: 60 })),
});
const scenarios = fc.record({
  prefilled: fc.boolean(),
  packagers: fc.array(packager, { minLength: 2, maxLength: 4 }),
  choices: fc.array(fc.nat({ max: 23 }), { maxLength: 400 }),
});

test('S3 index protocol: 2-4 packagers uploading, replacing and removing the same files, interleaved at every store call and killed between any two, keep every entry on its bytes unless two wrote the same file at once, settle every file no killed packager wrote, let the last uncontested writer win, keep packages.checksum following, and leave temps only when killed, which cleanTemps removes', async () => {
  await fc.assert(fc.asyncProperty(scenarios, runScenario), { numRuns: 500, includeErrorInReport: true });
});
