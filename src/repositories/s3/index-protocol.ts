import path from 'node:path';
import pLimit from 'p-limit';
import { AutotestError } from '../../errors.js';
import { isDeadTemp, isTempName, tempPathFor } from '../../fs/atomic.js';
import {
  CHECKSUM_FILE,
  MANIFEST_FILE,
  SIGNATURE_FILE,
  formatChecksumFile,
  formatManifest,
  matchesEntry,
  mergeIndex,
  parseChecksumFile,
  parseManifestDocument,
  type IndexEntry,
  type ManifestHeader,
  type RepositoryIndex,
} from '../../packages/index.js';
import { SIGNATURE_NAMESPACE, nextManifestHeader, signManifest, signerOf, verifySshsig } from '../../signing/index.js';
import { isHousekeepingName, type TargetOptions } from '../store.js';
import type { IndexChange, StagedFile } from '../types.js';
import type { ConditionalStore, UploadSource } from './conditional-store.js';
import { refused } from './refused.js';

/** Tries of one read-modify-write of an index file before giving up (each after a random pause). */
const INDEX_TRIES = 40;

export interface IndexProtocolOptions extends TargetOptions {
  /** The wait before try `attempt` + 1 of a write that met a 412 (a random pause that grows, by default). */
  pause?: (attempt: number) => Promise<void>;
  /** The temp name a replacement of `file` is staged under (host, pid and a random tag, by default). */
  tempNameFor?: (file: string) => string;
  /** Whether a temp was left by a packager that died (see isDeadTemp). */
  isDeadTemp?: (name: string, mtimeMs: number) => boolean;
}

interface TaggedIndex {
  index: RepositoryIndex;
  /** The ETag of packages.json as read; undefined when there is none (a new or legacy prefix). */
  etag: string | undefined;
  header: ManifestHeader | undefined;
}

const randomPause = (attempt: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, Math.random() * 20 * (attempt + 1)));

/**
 * The index of a store without locks, kept with conditional writes instead (optimistic
 * concurrency, see the README): packages.json is replaced only with If-Match on the ETag it
 * was read with (If-None-Match: * when new) and re-read and re-applied on 412;
 * packages.checksum follows it, derived from the manifest under the same rule, and so does
 * the signature. New packages go straight to their key (If-None-Match: *); a replacement goes
 * to a temp key first and is copied over its old version once its index entry is gone.
 * Copies and deletes cannot be conditional on radosgw 16, so two packagers writing the same
 * file at the same moment can leave an entry naming the other's bytes (see commit): fetchers
 * verify every byte, and the last writer to finish leaves the index right.
 */
export class IndexProtocol {
  readonly name: string;
  private readonly signing: TargetOptions['signing'];
  private readonly pause: (attempt: number) => Promise<void>;
  private readonly tempNameFor: (file: string) => string;
  private readonly isDeadTemp: (name: string, mtimeMs: number) => boolean;
  /** The index as last read by readIndex: a file it lists is replaced through a temp key, the others go straight to their key. */
  private indexRead: RepositoryIndex | undefined;
  /** For each staged object (its key relative to the prefix), the ETags the store may give the bytes this packager sent. */
  private readonly stagedEtags = new Map<string, string[]>();

  constructor(
    private readonly store: ConditionalStore,
    options: IndexProtocolOptions = {},
  ) {
    this.name = store.name;
    this.signing = options.signing;
    this.pause = options.pause ?? randomPause;
    this.tempNameFor = options.tempNameFor ?? ((file) => path.basename(tempPathFor(`/${file}`)));
    this.isDeadTemp = options.isDeadTemp ?? isDeadTemp;
  }

  /** The index as the manifest says (the manifest is the truth here; packages.checksum follows it). */
  private async readTaggedIndex(): Promise<TaggedIndex> {
    const [manifest, checksums] = await Promise.all([this.store.getText(MANIFEST_FILE), this.store.getText(CHECKSUM_FILE)]);
    if (manifest) return { ...parseManifestDocument(manifest.text, `${this.name}/${MANIFEST_FILE}`), etag: manifest.etag };
    // A prefix filled by Autotest's packager (copied up with aws s3 sync): md5s only.
    const legacy = checksums === undefined ? undefined : parseChecksumFile(checksums.text, `${this.name}/${CHECKSUM_FILE}`);
    return { index: mergeIndex(legacy, undefined), etag: undefined, header: undefined };
  }

  /** Runs `attempt` until it says it is done, pausing after each 412 it met; ERR_LOCK after INDEX_TRIES. */
  private async retry(file: string, attempt: () => Promise<boolean>): Promise<void> {
    for (let tries = 0; tries < INDEX_TRIES; tries++) {
      if (await attempt()) return;
      await this.pause(tries);
    }
    throw new AutotestError('ERR_LOCK', `upload location ${this.name}: ${file} kept changing under ${INDEX_TRIES.toString()} tries`, {
      hint: 'many packagers are writing this prefix at once; run the upload again',
    });
  }

  /**
   * One read-modify-write of the index that never loses another writer's change: `change`
   * edits a fresh copy and says whether it changed anything; on a 412 it runs again on what
   * the other writer left. packages.checksum and the signature follow, also when nothing
   * changed: a packager killed between the writes may have left them behind the manifest,
   * and they catch up before an object moves.
   */
  private async updateIndex(change: (index: RepositoryIndex) => Promise<boolean> | boolean): Promise<void> {
    await this.retry(MANIFEST_FILE, async () => {
      const { index, etag, header } = await this.readTaggedIndex();
      if (!(await change(index))) return true;
      return this.store.putTextIf(MANIFEST_FILE, formatManifest(index, nextManifestHeader(header, this.signing?.validDays)), etag);
    });
    await this.syncSignature();
    await this.syncChecksum();
  }

  /** packages.checksum made to match the manifest; each writer leaves it at least as new as the manifest it saw. */
  private async syncChecksum(): Promise<void> {
    await this.retry(CHECKSUM_FILE, async () => {
      // The checksum file first, then the manifest: what is written derives from a manifest
      // read after the version it replaces, so packages.checksum never goes back in time.
      const checksums = await this.store.getText(CHECKSUM_FILE);
      const text = formatChecksumFile((await this.readTaggedIndex()).index);
      if (checksums?.text === text) return true;
      return this.store.putTextIf(CHECKSUM_FILE, text, checksums?.etag);
    });
  }

  /**
   * packages.json.sig made to sign the manifest, under the same conditional rule as
   * packages.checksum: the signature is read before the manifest it is made from, so a
   * signature written never signs an older manifest than the one it replaces signed.
   */
  private async syncSignature(): Promise<void> {
    const { signing } = this;
    if (!signing) {
      await this.removeStaleSignature();
      return;
    }
    await this.retry(SIGNATURE_FILE, async () => {
      const current = await this.store.getText(SIGNATURE_FILE);
      const manifest = await this.store.getText(MANIFEST_FILE);
      if (!manifest) return true;
      if (current && verifySshsig(current.text, Buffer.from(manifest.text, 'utf8'), SIGNATURE_NAMESPACE, [signing.key.publicBlob]).valid) return true;
      return this.store.putTextIf(SIGNATURE_FILE, await signManifest(manifest.text, signing.key), current?.etag);
    });
  }

  /**
   * Without signing_key: a signature that no longer signs the manifest (by the key it names)
   * is left over from before signing_key was turned off, and would make every trusting client
   * take the prefix for forged; it goes, only while it is still the object looked at. One
   * that signs the manifest is another packager's of this prefix, and stays.
   */
  private async removeStaleSignature(): Promise<void> {
    const current = await this.store.getText(SIGNATURE_FILE);
    if (!current) return;
    const manifest = await this.store.getText(MANIFEST_FILE);
    const signer = signerOf(current.text);
    if (manifest && signer && verifySshsig(current.text, Buffer.from(manifest.text, 'utf8'), SIGNATURE_NAMESPACE, [signer]).valid) return;
    await this.removeIfUnchanged(SIGNATURE_FILE, current.etag);
  }

  /**
   * Deletes a file only while it is still the object looked at (`undefined`: there was none),
   * since another packager may have put a new one there meanwhile. S3 servers without
   * conditional deletes (radosgw 16) leave a moment between the look and the delete.
   */
  private async removeIfUnchanged(file: string, etag: string | undefined): Promise<boolean> {
    const now = await this.store.head(file);
    if (!now) return true;
    if (etag === undefined || now.etag !== etag) return false;
    await this.store.delete(file);
    return true;
  }

  async readIndex(): Promise<RepositoryIndex> {
    const { index } = await this.readTaggedIndex();
    this.indexRead = index;
    return index;
  }

  async fileSize(file: string): Promise<number | undefined> {
    return (await this.store.head(file))?.size;
  }

  /**
   * A new package goes straight to its key, only if nothing is there (If-None-Match: *): no
   * entry can name it. A replacement waits under a temp key until its old entry is out of
   * the index (commit). A store may ignore the condition on a large upload (radosgw 16 on a
   * multipart completion), so for a large file the key is looked at first.
   */
  async stage(file: string, source: UploadSource): Promise<StagedFile> {
    let existing = this.indexRead?.has(file) === true;
    if (!existing && (this.indexRead === undefined || source.size > this.store.conditionalUploadLimitBytes))
      existing = (await this.store.head(file)) !== undefined;
    if (!existing) {
      const etags = await this.store.upload(source, file, true);
      if (etags) {
        this.stagedEtags.set(file, etags);
        return { file, tempPath: file };
      }
    }
    if (source.size > this.store.copyLimitBytes) {
      throw refused(
        this.name,
        `replacing ${file}`,
        `packages over ${(this.store.copyLimitBytes / 1024 ** 3).toString()} GiB cannot be replaced on S3 by this version`,
        undefined,
        'remove it first ("autotest packager remove"), then upload it again',
      );
    }
    const tempName = this.tempNameFor(file);
    const etags = await this.store.upload(source, tempName, false);
    this.stagedEtags.set(tempName, etags ?? []);
    return { file, tempPath: tempName };
  }

  /**
   * Out of the index first (replaced and removed entries), then the bytes into place, then
   * into the index, each entry only if its key still holds the object this packager wrote:
   * when two packagers publish the same file at once, the one whose object stayed is the one
   * indexed, and the other reports that it lost the race.
   */
  async commit(change: IndexChange): Promise<void> {
    const filesChanging = new Set([...change.add.map(({ entry }) => entry.file), ...change.remove]);
    const entriesTakenOut = await this.takeEntriesOut(filesChanging);
    // What each file was when its entry left, to delete only that and to put the entry back
    // if this commit stops halfway.
    const etagsWhenTakenOut = await this.etagsOf([...filesChanging].filter((file) => entriesTakenOut.has(file) || change.remove.includes(file)));
    /** Keys this commit wrote or deleted: an entry taken out is not put back over them. */
    const keysWritten = new Set(change.add.filter(({ entry, staged }) => staged.tempPath === entry.file).map(({ entry }) => entry.file));
    let copyEtags: Map<string, string>;
    try {
      copyEtags = await this.placeAndRemove(change, etagsWhenTakenOut, keysWritten);
    } catch (error) {
      await this.putBackEntries(entriesTakenOut, keysWritten, etagsWhenTakenOut).catch(() => undefined);
      throw error;
    }
    const etagsOfOurBytes = new Map<string, string[]>();
    for (const { entry, staged } of change.add) {
      const copyEtag = copyEtags.get(entry.file);
      etagsOfOurBytes.set(entry.file, [...(copyEtag === undefined ? [] : [copyEtag]), ...(this.stagedEtags.get(staged.tempPath) ?? [])]);
    }
    const filesLostToOthers = await this.indexOurBytes(change, etagsOfOurBytes);
    const entriesIndexed = change.add.map(({ entry }) => entry).filter(({ file }) => !filesLostToOthers.includes(file));
    filesLostToOthers.push(...(await this.unindexDeletedMeanwhile(entriesIndexed)));
    await this.dropEntriesOfMissing(change.remove, () => true);
    if (filesLostToOthers.length > 0) {
      const one = filesLostToOthers.length === 1;
      throw refused(
        this.name,
        'publishing',
        `${filesLostToOthers.join(', ')} ${one ? 'was' : 'were'} replaced or removed by another packager meanwhile and ${one ? 'is' : 'are'} not indexed by this one`,
        undefined,
        'another packager published the same file at the same time and its version stayed; run the upload again if this version should win',
      );
    }
  }

  /** Drops the entries of `files` from the index; returns those that were there. */
  private async takeEntriesOut(files: Set<string>): Promise<Map<string, IndexEntry>> {
    const entriesTakenOut = new Map<string, IndexEntry>();
    await this.updateIndex((index) => {
      entriesTakenOut.clear();
      for (const file of files) {
        const entry = index.get(file);
        if (entry) entriesTakenOut.set(file, entry);
        index.delete(file);
      }
      return entriesTakenOut.size > 0;
    });
    return entriesTakenOut;
  }

  /** The ETag of each file now (undefined: missing), looked at 16 at a time. */
  private async etagsOf(files: string[]): Promise<Map<string, string | undefined>> {
    const limit = pLimit(16);
    return new Map(await Promise.all(files.map((file) => limit(async () => [file, (await this.store.head(file))?.etag] as const))));
  }

  /**
   * Copies staged replacements over their old objects (server-side) and deletes the files
   * removed, each only while it is what `etagsWhenTakenOut` saw; notes in `keysWritten` what
   * it changed. Returns the ETag of each copy the store told.
   */
  private async placeAndRemove(
    change: IndexChange,
    etagsWhenTakenOut: Map<string, string | undefined>,
    keysWritten: Set<string>,
  ): Promise<Map<string, string>> {
    const copyEtags = new Map<string, string>();
    for (const { entry, staged } of change.add) {
      if (staged.tempPath === entry.file) continue;
      keysWritten.add(entry.file);
      const etag = await this.store.copy(staged.tempPath, entry.file);
      if (etag !== undefined) copyEtags.set(entry.file, etag);
      await this.store.delete(staged.tempPath);
    }
    for (const file of change.remove) {
      keysWritten.add(file);
      await this.removeIfUnchanged(file, etagsWhenTakenOut.get(file));
    }
    return copyEtags;
  }

  /** A commit that stopped halfway puts back the entries it took out whose objects it did not touch and nobody else changed. */
  private async putBackEntries(
    entriesTakenOut: Map<string, IndexEntry>,
    keysWritten: Set<string>,
    etagsWhenTakenOut: Map<string, string | undefined>,
  ): Promise<void> {
    await this.updateIndex(async (index) => {
      let changed = false;
      for (const [file, entry] of entriesTakenOut) {
        if (keysWritten.has(file) || index.has(file)) continue;
        const now = await this.store.head(file);
        if (now && now.etag === etagsWhenTakenOut.get(file)) {
          index.set(file, entry);
          changed = true;
        }
      }
      return changed;
    });
  }

  /** Indexes each added file whose key holds this packager's bytes, and the refreshed entries; returns the files another packager's bytes replaced. */
  private async indexOurBytes(change: IndexChange, etagsOfOurBytes: Map<string, string[]>): Promise<string[]> {
    const limit = pLimit(16);
    const filesLostToOthers: string[] = [];
    await this.updateIndex(async (index) => {
      filesLostToOthers.length = 0;
      const objectsNow = await Promise.all(change.add.map(({ entry }) => limit(() => this.store.head(entry.file))));
      change.add.forEach(({ entry }, i) => {
        const now = objectsNow[i];
        if (now && (etagsOfOurBytes.get(entry.file) ?? []).includes(now.etag)) index.set(entry.file, entry);
        else filesLostToOthers.push(entry.file);
      });
      for (const entry of change.refresh) {
        if (index.get(entry.file)?.md5 === entry.md5) index.set(entry.file, entry);
      }
      return change.add.length > filesLostToOthers.length || change.refresh.length > 0;
    });
    return filesLostToOthers;
  }

  /**
   * A remover deletes without condition, after it looked at the object: when it looked
   * after another packager placed and indexed the same file, it deletes those bytes. So each
   * side checks after its own write: the uploader looks at its objects after indexing them,
   * the remover at the index after deleting. Whichever comes second sees the other's write
   * and drops the entry of the missing object, so no entry is left naming a deleted file.
   * Returns the files of `entries` dropped.
   */
  private async unindexDeletedMeanwhile(entries: IndexEntry[]): Promise<string[]> {
    const etagsNow = await this.etagsOf(entries.map(({ file }) => file));
    const deleted = entries.filter(({ file }) => etagsNow.get(file) === undefined);
    if (deleted.length === 0) return [];
    const ours = new Map(deleted.map((entry) => [entry.file, entry]));
    return this.dropEntriesOfMissing(
      [...ours.keys()],
      (entry) => entry.md5 === ours.get(entry.file)?.md5 && entry.publishedAt === ours.get(entry.file)?.publishedAt,
    );
  }

  /** Drops the entries (those `drop` picks) of `files` whose objects are missing; returns the files dropped. */
  private async dropEntriesOfMissing(files: string[], drop: (entry: IndexEntry) => boolean): Promise<string[]> {
    if (files.length === 0) return [];
    const { index: indexNow } = await this.readTaggedIndex();
    if (!files.some((file) => indexNow.has(file))) return [];
    const dropped: string[] = [];
    await this.updateIndex(async (index) => {
      dropped.length = 0;
      for (const file of files) {
        const entry = index.get(file);
        if (!entry || !drop(entry) || (await this.store.head(file)) !== undefined) continue;
        index.delete(file);
        dropped.push(file);
      }
      return dropped.length > 0;
    });
    return dropped;
  }

  /** Deletes staged files that will not be committed: a temp always; one sent straight to its key only while it is still ours and no entry names it. */
  async discard(staged: StagedFile[]): Promise<void> {
    for (const { tempPath } of staged) {
      const etagsOfOurBytes = this.stagedEtags.get(tempPath) ?? [];
      this.stagedEtags.delete(tempPath);
      if (isTempName(tempPath)) {
        await this.store.delete(tempPath).catch(() => undefined);
        continue;
      }
      const index = await this.readTaggedIndex().then(
        (read) => read.index,
        () => undefined,
      );
      const now = await this.store.head(tempPath).catch(() => undefined);
      if (index && !index.has(tempPath) && now && etagsOfOurBytes.includes(now.etag)) await this.store.delete(tempPath).catch(() => undefined);
    }
  }

  async listFiles(): Promise<string[]> {
    return [...(await this.store.list()).keys()];
  }

  async digestFile(file: string): Promise<{ md5: string; sha256: string; size: number }> {
    const { md5, sha256, size } = await this.store.digest(file);
    return { md5, sha256, size };
  }

  /** Removes the temps of dead packagers and aborts the uploads they never completed; returns their names. */
  async cleanTemps(): Promise<string[]> {
    const deadTemps = [...(await this.store.list())]
      .filter(([file, object]) => isTempName(file) && this.isDeadTemp(file, object.mtimeMs))
      .map(([file]) => file);
    for (const file of deadTemps) await this.store.delete(file);
    return [...deadTemps, ...(await this.store.abortDeadUploads())];
  }

  /** Drops files still missing or corrupt when checked, with their entries; returns those dropped. */
  async purge(files: string[]): Promise<string[]> {
    const indexChecked = (await this.readTaggedIndex()).index;
    /** Each bad file with its ETag when checked (undefined: missing). */
    const badFiles = new Map<string, string | undefined>();
    for (const file of files) {
      const entry = indexChecked.get(file);
      const digests = await this.store.digest(file).catch((error: unknown) => {
        if (error instanceof AutotestError && error.code === 'ERR_NOT_FOUND') return undefined;
        throw error;
      });
      if (entry && digests && matchesEntry(entry, digests)) continue;
      badFiles.set(file, digests?.etag);
    }
    const dropped: string[] = [];
    await this.updateIndex((index) => {
      dropped.length = 0;
      for (const file of badFiles.keys()) {
        // Only the entry that was checked: another packager may have republished it since.
        const now = index.get(file);
        const then = indexChecked.get(file);
        if (now?.md5 !== then?.md5 || now?.publishedAt !== then?.publishedAt) continue;
        index.delete(file);
        dropped.push(file);
      }
      return dropped.length > 0;
    });
    for (const file of dropped) await this.removeIfUnchanged(file, badFiles.get(file));
    await this.dropEntriesOfMissing(dropped, () => true);
    return [...badFiles.keys()].filter((file) => dropped.includes(file) || !indexChecked.has(file)).sort();
  }

  /** Deletes packages (and plain files) last modified before `olderThanMs`, index first; returns their names. */
  async expire(olderThanMs: number): Promise<string[]> {
    const old = [...(await this.store.list())].filter(([file, object]) => !isHousekeepingName(file) && object.mtimeMs < olderThanMs);
    if (old.length === 0) return [];
    await this.updateIndex((index) => {
      let changed = false;
      for (const [file] of old) changed = index.delete(file) || changed;
      return changed;
    });
    const removed: string[] = [];
    for (const [file, object] of old) {
      if (await this.removeIfUnchanged(file, object.etag)) removed.push(file);
    }
    await this.dropEntriesOfMissing(removed, () => true);
    return removed.sort();
  }

  async readSignedPair(): Promise<{ manifest: string | undefined; signature: string | undefined }> {
    const signature = await this.store.getText(SIGNATURE_FILE);
    return { signature: signature?.text, manifest: (await this.store.getText(MANIFEST_FILE))?.text };
  }

  /** Writes the index again with a new serial (and expiry), signed when there is a signing key. */
  async sign(): Promise<number> {
    await this.updateIndex(() => true);
    return (await this.readTaggedIndex()).header?.serial ?? 0;
  }
}
