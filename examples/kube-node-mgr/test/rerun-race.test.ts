// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
import { afterEach, expect, it } from 'vitest';
import { type Harness, login, startHarness, waitForTask } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/**
 * "Retry failed" once per task: the check for an earlier rerun was a read before the rerun started. Two
 * reruns of the same task sent at once (two tabs, the owner and an admin, two replicas) both read "none";
 * the node locks stopped the second only while the first still ran, so a second read answered late (a slow
 * database, a busy replica) started a second rerun once the first had ended: the operation applied to the
 * same nodes again, undoing what was changed on them since.
 */
it('two reruns of one task racing: one runs, the other gets 409 already_rerun even after the first ended', async () => {
  h = await startHarness({ cluster: { failNodes: ['spot-2'] } });
  const alice = await login(h.base, 'alice');
  const ada = await login(h.base, 'ada');
  const first = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1', 'spot-2'] });
  expect((await waitForTask(alice, first.body.taskId)).task).toMatchObject({ succeeded: 1, failed: 1 });
  h.cluster.setFaults({ failNodes: [] });
  // The admin's read of the earlier reruns is answered only once alice's rerun has run to its end.
  const db = h.db;
  const reruns = db.reruns.bind(db);
  let release!: () => void;
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  let held = false;
  let readDone!: () => void;
  const read = new Promise<void>((resolve) => {
    readDone = resolve;
  });
  db.reruns = async (...args) => {
    const rows = await reruns(...args);
    if (!held) {
      held = true;
      readDone();
      await gate;
    }
    return rows;
  };
  const late = ada.post(`/api/tasks/${first.body.taskId}/rerun`, { mode: 'retry_failed' });
  await read;
  const retry = await alice.post(`/api/tasks/${first.body.taskId}/rerun`, { mode: 'retry_failed' });
  expect(retry.status).toBe(202);
  expect((await waitForTask(alice, retry.body.taskId)).task.status).toBe('completed');
  // Its locks released (after its end): nothing else stops a second rerun now.
  for (let i = 0; i < 100 && (await db.locks('default')).length > 0; i++)
    await new Promise((r) => setTimeout(r, 10));
  // Meanwhile someone uncordoned spot-2 (kubectl): a second retry would cordon it again.
  h.cluster.mutate('spot-2', (node) => {
    delete node.spec.unschedulable;
  });
  release();
  const second = await late;
  expect(second.status).toBe(409);
  expect(second.body.error).toMatchObject({ code: 'already_rerun', taskId: retry.body.taskId });
  expect(h.cluster.node('spot-2')?.spec.unschedulable).toBeUndefined();
  const list = (await ada.get('/api/tasks')).body.tasks;
  expect(list.filter((t: any) => t.parentTaskId === first.body.taskId)).toHaveLength(1);
});
