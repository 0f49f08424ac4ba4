/**
 * A passing database failure under the node locks (a busy database, a dropped connection) was taken for
 * another batch holding the nodes: the locks read after it were answered as in the way, 409 `nodes_locked`
 * naming a task that had ended (a batch started as another finished, before that one's unlock ran), or a
 * 500 when no lock was left. The locks are now tried again, and a failure that lasts is 503 with
 * `Retry-After`.
 */
import { afterEach, expect, it } from 'vitest';
import { LOCK_ATTEMPTS } from '../src/server/app-db.js';
import { type Harness, login, startHarness, waitForTask } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/** Makes the next `count` writes of node locks fail, as a busy database fails them. */
function failLockWrites(harness: Harness, count: number): void {
  let left = count;
  harness.sqlite.function('knm_test_fail_lock', () => {
    if (left === 0) return 0;
    left--;
    return 1;
  });
  harness.sqlite.exec(`
    drop trigger if exists knm_test_busy;
    create trigger knm_test_busy before insert on knm_cluster_locks when knm_test_fail_lock()
    begin select raise(abort, 'database is locked'); end;`);
}

it('takes over the locks of a batch that has ended when the first write fails, instead of naming it in a 409', async () => {
  h = await startHarness();
  const alice = await login(h.base, 'alice');
  const first = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1', 'worker-2'] });
  expect(first.status).toBe(202);
  expect((await waitForTask(alice, first.body.taskId)).task.status).toBe('completed');
  // Its unlock runs after the task ends; here it has not run yet: its locks are put back once it has.
  while ((await h.db.locks('default')).length > 0) await new Promise((r) => setTimeout(r, 10));
  expect(
    await h.db.lockNodes(
      'default',
      ['worker-1', 'worker-2'],
      { taskId: first.body.taskId, username: 'alice' },
      async () => false,
    ),
  ).toEqual([]);
  failLockWrites(h, 1);
  const second = await alice.post('/api/batch', { operation: 'uncordon', nodes: ['worker-1', 'worker-2'] });
  expect(second.body.error).toBeUndefined();
  expect(second.status).toBe(202);
  expect((await waitForTask(alice, second.body.taskId)).task.status).toBe('completed');
  expect(h.cluster.node('worker-1')?.spec.unschedulable).toBeUndefined();
});

it('answers 503 lock_unavailable with Retry-After when the locks cannot be written, and starts nothing', async () => {
  h = await startHarness();
  const alice = await login(h.base, 'alice');
  failLockWrites(h, LOCK_ATTEMPTS);
  const res = await fetch(`${h.base}/api/batch`, {
    method: 'POST',
    headers: {
      cookie: alice.cookie,
      origin: h.base,
      'content-type': 'application/json',
      'x-csrf-token': alice.csrf,
    },
    body: JSON.stringify({ operation: 'cordon', nodes: ['worker-3'] }),
  });
  expect(res.status).toBe(503);
  expect(res.headers.get('retry-after')).toBe('1');
  expect(((await res.json()) as { error: unknown }).error).toMatchObject({
    code: 'lock_unavailable',
    retryAfterS: 1,
  });
  expect(await h.store.listTasks({ owner: 'alice' })).toEqual([]);
  expect(await h.db.locks('default')).toEqual([]);
  // The failure passed: the same request starts the batch.
  const again = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-3'] });
  expect(again.status).toBe(202);
  await waitForTask(alice, again.body.taskId);
});

/** Makes the next COMMIT on the app's connection land, then fail, as a connection lost after its COMMIT. */
function loseNextCommitAnswer(harness: Harness): void {
  const prepare = harness.sqlite.prepare.bind(harness.sqlite);
  let armed = true;
  harness.sqlite.prepare = ((source: string) => {
    const stmt = prepare(source);
    if (!armed || source.trim().toLowerCase() !== 'commit') return stmt;
    armed = false;
    const run = stmt.run.bind(stmt);
    return Object.assign(Object.create(stmt), {
      run: (...args: unknown[]) => {
        run(...(args as []));
        throw new Error('Connection terminated unexpectedly');
      },
    });
  }) as typeof harness.sqlite.prepare;
}

it('releases the locks of a 503 lock_unavailable whose last write committed: the nodes are free at once', async () => {
  h = await startHarness();
  const alice = await login(h.base, 'alice');
  // Every attempt but the last fails; the last one's COMMIT lands and its answer is lost.
  failLockWrites(h, LOCK_ATTEMPTS - 1);
  loseNextCommitAnswer(h);
  const res = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1', 'worker-2'] });
  expect(res.status).toBe(503);
  expect(res.body.error).toMatchObject({ code: 'lock_unavailable' });
  expect(await h.store.listTasks({ owner: 'alice' })).toEqual([]);
  // No batch holds them: left in place, they blocked both nodes for the lock's creation grace (30 s).
  expect(await h.db.locks('default')).toEqual([]);
  const again = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1', 'worker-2'] });
  expect(again.body.error).toBeUndefined();
  expect(again.status).toBe(202);
  expect((await waitForTask(alice, again.body.taskId)).task.status).toBe('completed');
  expect(h.cluster.node('worker-1')?.spec.unschedulable).toBe(true);
});
