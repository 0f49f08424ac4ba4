// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
/**
 * `POST /api/batch` had no idempotency key: a client sending the request again after a lost answer (a proxy's
 * 502, a dropped connection) started the batch a second time. With an `Idempotency-Key`, the same key and
 * request of the same user answer the batch the first started; the key with another request is 422.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { type Harness, login, postAs, startHarness, waitForTask } from './harness.js';

const harnesses: Harness[] = [];
const dirs: string[] = [];
afterEach(async () => {
  for (const h of harnesses.splice(0)) await h.close();
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

async function harness(options: Parameters<typeof startHarness>[0] = {}): Promise<Harness> {
  const h = await startHarness(options);
  harnesses.push(h);
  return h;
}

/** A `POST /api/batch` whose answer's headers are kept. */
async function postBatch(
  base: string,
  client: { cookie: string; csrf: string },
  body: unknown,
  key?: string,
): Promise<{ status: number; body: any; headers: Headers }> {
  const headers = key === undefined ? {} : { 'idempotency-key': key };
  const res = await postAs(client, base, '/api/batch', JSON.stringify(body), headers);
  return { status: res.status, body: await res.json(), headers: res.headers };
}

/** A database file in a directory of its own (removed after the test), for replicas to share. */
function databaseFile(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'knm-idem-'));
  dirs.push(dir);
  return path.join(dir, 'progress.db');
}

/**
 * A harness whose first node list (the batch's check of its nodes) waits for the test: `listed` resolves
 * once it is asked, `release()` lets it be answered.
 */
async function harnessHoldingNodeList(
  options: { file?: string } = {},
): Promise<{ h: Harness; listed: Promise<void>; release: () => void }> {
  let release: (() => void) | undefined;
  let listing: (() => void) | undefined;
  const listed = new Promise<void>((resolve) => {
    listing = resolve;
  });
  const h = await harness({
    ...options,
    cluster: {
      onRequest: async ({ method, path: p }) => {
        if (method !== 'GET' || p !== '/api/v1/nodes' || listing === undefined) return;
        listing();
        listing = undefined;
        await new Promise<void>((resolve) => {
          release = resolve;
        });
      },
    },
  });
  return { h, listed, release: () => release?.() };
}

const CORDON = { operation: 'cordon', nodes: ['worker-1', 'worker-2'] };

it('answers the same key and request again with the batch it started, which runs once', async () => {
  const h = await harness();
  const alice = await login(h.base, 'alice');
  const first = await postBatch(h.base, alice, CORDON, 'k-1');
  expect(first.status).toBe(202);
  expect(first.headers.get('idempotent-replayed')).toBeNull();
  await waitForTask(alice, first.body.taskId);
  // The batch has ended, its locks are released: without the key this would start a second one.
  const again = await postBatch(h.base, alice, { ...CORDON, nodes: [...CORDON.nodes] }, 'k-1');
  expect(again.status).toBe(202);
  expect(again.body).toEqual(first.body);
  expect(again.headers.get('idempotent-replayed')).toBe('true');
  expect((await h.store.listTasks({ owner: 'alice' })).map((t) => t.id)).toEqual([first.body.taskId]);
  // Another user's key of the same name is another key.
  const bob = await login(h.base, 'bob');
  const bobs = await postBatch(h.base, bob, { operation: 'uncordon', nodes: ['worker-1'] }, 'k-1');
  expect(bobs.status).toBe(202);
  expect(bobs.body.taskId).not.toBe(first.body.taskId);
});

it('refuses the key with another request (422 idempotency_key_reused), and a malformed key (400)', async () => {
  const h = await harness();
  const alice = await login(h.base, 'alice');
  const first = await postBatch(h.base, alice, CORDON, 'k-2');
  expect(first.status).toBe(202);
  for (const other of [
    { ...CORDON, nodes: ['worker-1'] },
    { ...CORDON, reason: 'disk' },
    { operation: 'uncordon', nodes: CORDON.nodes },
  ]) {
    const res = await postBatch(h.base, alice, other, 'k-2');
    expect(res.status).toBe(422);
    expect(res.body.error).toMatchObject({ code: 'idempotency_key_reused', taskId: first.body.taskId });
  }
  for (const bad of ['a b', 'x'.repeat(256), '']) {
    const res = await postBatch(h.base, alice, CORDON, bad);
    expect(res.status).toBe(400);
    expect(res.body.error).toMatchObject({ code: 'invalid_input', field: 'Idempotency-Key' });
  }
  expect(await h.store.listTasks({ owner: 'alice' })).toHaveLength(1);
  await waitForTask(alice, first.body.taskId);
});

it('answers 409 idempotency_key_in_use while the first request is answered; a refused start frees the key', async () => {
  const { h, listed, release } = await harnessHoldingNodeList();
  const alice = await login(h.base, 'alice');
  const first = postBatch(h.base, alice, CORDON, 'k-3');
  await listed;
  const during = await postBatch(h.base, alice, CORDON, 'k-3');
  expect(during.status).toBe(409);
  expect(during.headers.get('retry-after')).toBe('1');
  expect(during.body.error).toMatchObject({ code: 'idempotency_key_in_use' });
  release();
  const done = await first;
  expect(done.status).toBe(202);
  expect((await postBatch(h.base, alice, CORDON, 'k-3')).body.taskId).toBe(done.body.taskId);
  await waitForTask(alice, done.body.taskId);

  // A start refused (a node locked by a running batch) keeps nothing: the same request and key start it later.
  expect(
    await h.db.lockNodes('default', ['worker-5'], { taskId: 'other', username: 'bob' }, async () => false),
  ).toEqual([]);
  const body = { operation: 'cordon', nodes: ['worker-5'] };
  const refused = await postBatch(h.base, alice, body, 'k-4');
  expect(refused.status).toBe(409);
  expect(refused.body.error.code).toBe('nodes_locked');
  await h.db.unlockTask('other');
  const later = await postBatch(h.base, alice, body, 'k-4');
  expect(later.status).toBe(202);
  expect(later.headers.get('idempotent-replayed')).toBeNull();
  await waitForTask(alice, later.body.taskId);
});

it('keeps the key in the database: another replica, and the app restarted, answer the same batch', async () => {
  const file = databaseFile();
  const one = await harness({ file });
  const two = await harness({ file });
  const first = await postBatch(one.base, await login(one.base, 'alice'), CORDON, 'k-5');
  expect(first.status).toBe(202);
  const other = await postBatch(two.base, await login(two.base, 'alice'), CORDON, 'k-5');
  expect(other.status).toBe(202);
  expect(other.body.taskId).toBe(first.body.taskId);
  await waitForTask(await login(one.base, 'alice'), first.body.taskId);
  for (const h of harnesses.splice(0)) await h.close();
  const restarted = await harness({ file });
  const after = await postBatch(restarted.base, await login(restarted.base, 'alice'), CORDON, 'k-5');
  expect(after.status).toBe(202);
  expect(after.body.taskId).toBe(first.body.taskId);
  expect(await restarted.store.listTasks({ owner: 'alice' })).toHaveLength(1);
});

it('a request slower than its claim’s 30 s, whose key a retry took over, starts nothing: one batch', async () => {
  const { h, listed, release } = await harnessHoldingNodeList();
  const alice = await login(h.base, 'alice');
  const slow = postBatch(h.base, alice, CORDON, 'k-6');
  await listed;
  // Its claim is a minute old: taken for the claim of a replica that died before starting the batch.
  h.sqlite.prepare('update knm_idempotency_keys set created_at = created_at - 60000').run();
  const retry = await postBatch(h.base, alice, CORDON, 'k-6');
  expect(retry.status).toBe(202);
  // The retry's batch has ended and released its nodes: nothing but the key stops the slow one now.
  await waitForTask(alice, retry.body.taskId);
  while ((await h.db.locks('default')).length > 0) await new Promise((r) => setTimeout(r, 10));
  release();
  const late = await slow;
  expect(late.status).toBe(409);
  expect(late.body.error).toMatchObject({ code: 'idempotency_key_in_use', retryAfterS: 1 });
  expect((await h.store.listTasks({ owner: 'alice' })).map((t) => t.id)).toEqual([retry.body.taskId]);
  expect(await h.db.locks('default')).toEqual([]);
  expect((await postBatch(h.base, alice, CORDON, 'k-6')).body.taskId).toBe(retry.body.taskId);
});

it('a retry on another replica while the slow first request creates its batch does not take its key: one batch', async () => {
  const file = databaseFile();
  const { h, listed, release: releaseList } = await harnessHoldingNodeList({ file });
  // The first request's record of its batch (written after its task is created) waits for the test.
  let recording: (() => void) | undefined;
  const reached = new Promise<void>((resolve) => {
    recording = resolve;
  });
  let releaseRecord: (() => void) | undefined;
  const recordTask = h.db.recordTask.bind(h.db);
  h.db.recordTask = async (record) => {
    recording?.();
    await new Promise<void>((resolve) => {
      releaseRecord = resolve;
    });
    return recordTask(record);
  };
  const alice = await login(h.base, 'alice');
  const slow = postBatch(h.base, alice, CORDON, 'k-7');
  await listed;
  // Its node list took past the claim's 30 s; the request goes on, checks its key still held, and starts.
  h.sqlite.prepare('update knm_idempotency_keys set created_at = created_at - 60000').run();
  releaseList();
  await reached;
  // A retry now, to another replica: the batch is being created, its key is not abandoned.
  const two = await harness({ file });
  const retry = await postBatch(two.base, await login(two.base, 'alice'), CORDON, 'k-7');
  expect(retry.status).toBe(409);
  expect(retry.body.error.code).toBe('idempotency_key_in_use');
  h.db.recordTask = recordTask;
  releaseRecord?.();
  const first = await slow;
  expect(first.status).toBe(202);
  await waitForTask(alice, first.body.taskId);
  while ((await h.db.locks('default')).length > 0) await new Promise((r) => setTimeout(r, 10));
  // Its batch has ended: the key still answers it, and starts no second one.
  const again = await postBatch(h.base, alice, CORDON, 'k-7');
  expect(again.status).toBe(202);
  expect(again.body.taskId).toBe(first.body.taskId);
  expect(await h.store.listTasks({ owner: 'alice' })).toHaveLength(1);
});
