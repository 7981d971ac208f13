import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { parseFetchLocation, type FetchLocation, type Location } from '../src/config/index.js';
import { orderForPackage, rankMembers, rendezvousScore } from '../src/fetch/index.js';

const FRONTS = ['http://f1.lab/packages/builtin', 'http://f2.lab/packages/builtin', 'http://f3.lab/packages/builtin'];
const FILES = Array.from({ length: 30 }, (_, i) => `test-t${String(i).padStart(3, '0')}.tar.bz2`);

function group(urls: readonly string[]): FetchLocation {
  return parseFetchLocation(urls.join(' | '), '/');
}

function texts(locations: Location[]): string[] {
  return locations.map((location) => location.text);
}

/** How many of `files` each front comes first for. */
function firstChoices(urls: readonly string[], files: readonly string[]): Map<string, number> {
  const counts = new Map(urls.map((url) => [url, 0]));
  for (const file of files) {
    const [first] = texts(orderForPackage([group(urls)], file));
    if (first !== undefined) counts.set(first, (counts.get(first) ?? 0) + 1);
  }
  return counts;
}

test('scores a member by the first 8 bytes, big-endian, of sha256 of its URL, a newline and the file name', () => {
  const digest = createHash('sha256').update('http://f1.lab/packages/builtin\ntest-dbench.tar.bz2').digest('hex');
  assert.equal(rendezvousScore('http://f1.lab/packages/builtin', 'test-dbench.tar.bz2'), BigInt(`0x${digest.slice(0, 16)}`));
});

test('orders a group highest score first, and a trailing slash on a member changes nothing', () => {
  for (const file of FILES.slice(0, 5)) {
    const expected = [...FRONTS].sort((a, b) => (rendezvousScore(b, file) > rendezvousScore(a, file) ? 1 : -1));
    assert.deepEqual(texts(orderForPackage([group(FRONTS)], file)), expected, file);
    const slashed = orderForPackage([group(FRONTS.map((url) => `${url}/`))], file);
    assert.deepEqual(
      slashed.map((l) => (l.kind === 'http' ? l.url : l.text)),
      expected,
      `${file} with trailing slashes`,
    );
  }
});

test('breaks a tie between members by their position in the group', () => {
  assert.deepEqual(
    rankMembers(['a', 'b', 'c'], () => 'same', 'test-x.tar.bz2'),
    ['a', 'b', 'c'],
  );
});

test('keeps comma-separated locations in the order written, with each group ranked in its place', () => {
  const locations = [parseFetchLocation('/srv/first', '/'), group(FRONTS), parseFetchLocation('/srv/last', '/')];
  for (const file of FILES.slice(0, 5)) {
    const order = texts(orderForPackage(locations, file));
    assert.equal(order[0], '/srv/first');
    assert.equal(order[4], '/srv/last');
    assert.deepEqual(order.slice(1, 4), texts(orderForPackage([group(FRONTS)], file)));
  }
});

test('spreads 30 packages over three fronts, each getting between half and one and a half times its equal share', () => {
  for (const [url, count] of firstChoices(FRONTS, FILES)) {
    assert.ok(count >= 5 && count <= 15, `${url} comes first for ${count.toString()} of 30 packages`);
  }
  const many = Array.from({ length: 3000 }, (_, i) => `test-p${i.toString()}.tar.bz2`);
  for (const [url, count] of firstChoices(FRONTS, many)) {
    assert.ok(count >= 900 && count <= 1100, `${url} comes first for ${count.toString()} of 3000 packages`);
  }
});

test("moves only a removed front's packages, each to its own next choice", () => {
  const [gone = '', ...kept] = FRONTS;
  for (const file of FILES) {
    const before = texts(orderForPackage([group(FRONTS)], file));
    const after = texts(orderForPackage([group(kept)], file));
    assert.deepEqual(
      after,
      before.filter((url) => url !== gone),
      file,
    );
  }
});

test('reads "|" groups in fetch_location, and refuses an empty or repeated member', () => {
  const parsed = parseFetchLocation(' http://f1.lab/b |http://f2.lab/b | /srv/p ', '/');
  assert.ok(parsed.kind === 'group');
  assert.deepEqual(
    parsed.members.map((m) => m.kind),
    ['http', 'http', 'local'],
  );
  assert.equal(parsed.text, 'http://f1.lab/b | http://f2.lab/b | /srv/p');
  assert.throws(() => parseFetchLocation('http://f1.lab/b | ', '/'), /a "\|" group has an empty member/);
  assert.throws(() => parseFetchLocation('http://f1.lab/b | http://f1.lab/b/', '/'), /"http:\/\/f1\.lab\/b\/?" is twice in the same "\|" group/);
});
