import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { FetchSettings } from '../src/config/index.js';
import { PackageFetcher } from '../src/fetch/index.js';
import { Resources, withResources, type ResourceKind } from '../src/resources.js';

/** A kind whose parts are numbered as made, and that notes each closing in `closed`. */
function countingKind(name: string, closed: string[], failure?: Error): ResourceKind<{ id: number }> {
  let made = 0;
  return {
    name,
    create: () => ({ id: (made += 1) }),
    close: (part) => {
      closed.push(`${name} ${part.id.toString()}`);
      if (failure) throw failure;
    },
  };
}

const SETTINGS: FetchSettings = { connectTimeoutMs: 1000, timeoutMs: 2000, retries: 0, cooldownMs: 0, maxSizeBytes: 1e9 };

test('makes each part once at its first use, closes them all the last made first, and makes them afresh when used again', async () => {
  const closed: string[] = [];
  const agents = countingKind('agents', closed);
  const masters = countingKind('masters', closed);
  const resources = new Resources();
  assert.equal(resources.get(agents), resources.get(agents));
  resources.get(masters);
  await resources.close();
  assert.deepEqual(closed, ['masters 1', 'agents 1']);
  assert.equal(resources.get(agents).id, 2);
  await resources.close();
  assert.deepEqual(closed, ['masters 1', 'agents 1', 'agents 2']);
});

test('closes every part even when one fails to close, then throws that failure', async () => {
  const closed: string[] = [];
  const resources = new Resources();
  resources.get(countingKind('agents', closed));
  resources.get(countingKind('masters', closed, new Error('master would not exit')));
  await assert.rejects(resources.close(), /master would not exit/);
  assert.deepEqual(closed, ['masters 1', 'agents 1']);
});

test('withResources closes resources of its own when the work ends, and never those it is given', async () => {
  const closed: string[] = [];
  const kind = countingKind('agents', closed);
  await assert.rejects(
    withResources(undefined, (own) => {
      own.get(kind);
      return Promise.reject(new Error('failed'));
    }),
    /failed/,
  );
  assert.deepEqual(closed, ['agents 1'], 'closed even when the work fails');
  const given = new Resources();
  await withResources(given, (resources) => Promise.resolve(resources.get(kind)));
  assert.deepEqual(closed, ['agents 1']);
  await given.close();
  assert.deepEqual(closed, ['agents 1', 'agents 2']);
});

test('a fetcher leaves open the resources it is given', async () => {
  const closed: string[] = [];
  const kind = countingKind('agents', closed);
  const resources = new Resources();
  const part = resources.get(kind);
  const fetcher = await PackageFetcher.create([{ kind: 'local', path: '/nonexistent', text: '/nonexistent' }], SETTINGS, { resources });
  await fetcher.close();
  assert.deepEqual(closed, []);
  assert.equal(resources.get(kind), part);
  await resources.close();
});
