/**
 * A review on 7 December 2026: the running-batches cap (`maxRunningBatchesPerUser`) was checked before the
 * batch's task existed, and starts were serialized per process only. Behind the replicas (the deployment runs
 * 3, without affinity), starts sent at once landed on different replicas, both read the user's running
 * batches before either task existed, and both started: 4 running of at most 3 (up to the cap plus the
 * replicas less one). Each start now counts again once its own task is in the store.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { ProgressStore } from '@finishline/core';
import { afterEach, expect, it } from 'vitest';
import { type Harness, login, startHarness } from './harness.js';

const harnesses: Harness[] = [];
afterEach(async () => {
  for (const h of harnesses.splice(0)) await h.close();
});

/**
 * Holds each replica's first read of alice's running batches until both replicas have made theirs: the two
 * checks at once, as two processes make them (in one process the first start, all of it on SQLite, ended
 * before the other's check ran).
 */
function checksAtOnce(stores: ProgressStore[]): void {
  let arrived = 0;
  let release: () => void = () => undefined;
  const bothThere = new Promise<void>((resolve) => {
    release = resolve;
  });
  for (const store of stores) {
    const list = store.listTasks.bind(store);
    let held = false;
    store.listTasks = async (query) => {
      if (!held && query.owner === 'alice') {
        held = true;
        if (++arrived === stores.length) release();
        await bothThere;
      }
      return list(query);
    };
  }
}

it('starts at most maxRunningBatchesPerUser of a user when two replicas start one at once', async () => {
  const file = path.join(mkdtempSync(path.join(tmpdir(), 'knm-cap-')), 'db.sqlite');
  // Slow enough that the first two batches still run while the last two start.
  for (let i = 0; i < 2; i++) harnesses.push(await startHarness({ file, cluster: { latencyMs: 300 } }));
  const [a, b] = harnesses as [Harness, Harness];
  const onA = await login(a.base, 'alice');
  const onB = await login(b.base, 'alice');
  const names: string[] = (await onA.get('/api/nodes')).body.nodes.map((n: { name: string }) => n.name);
  for (const nodes of [names.slice(0, 6), names.slice(6, 12)]) {
    expect((await onA.post('/api/batch', { operation: 'cordon', nodes })).status).toBe(202);
  }
  checksAtOnce([a.store, b.store]);
  const [third, fourth] = await Promise.all([
    onA.post('/api/batch', { operation: 'cordon', nodes: [names[12]] }),
    onB.post('/api/batch', { operation: 'cordon', nodes: [names[13]] }),
  ]);
  const running = await a.store.listTasks({ owner: 'alice', statuses: ['running'], limit: 10 });
  expect(running.length).toBeLessThanOrEqual(3);
  // One of them, at least, is refused as the check before the task refuses: 429 too_many_batches.
  const refused = [third, fourth].filter((r) => r.status !== 202);
  expect(refused.length).toBeGreaterThanOrEqual(1);
  for (const r of refused) expect(r.body.error.code).toBe('too_many_batches');
  // A refused start leaves no batch behind: its task is not in the task list, its node not locked.
  const listed = (await onA.get('/api/tasks?limit=10')).body.tasks;
  expect(listed).toHaveLength(2 + 2 - refused.length);
  expect(await a.db.locks('default', [names[12] as string, names[13] as string])).toHaveLength(
    2 - refused.length,
  );
});
