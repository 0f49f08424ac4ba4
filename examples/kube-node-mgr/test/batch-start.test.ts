// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
import { afterEach, describe, expect, it } from 'vitest';
import { type Harness, login, startHarness } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('starting a batch', () => {
  it('a batch whose audit record cannot be written ends its task instead of leaving it running forever', async () => {
    h = await startHarness();
    const alice = await login(h.base, 'alice');
    const db = h.db;
    const recordTask = db.recordTask.bind(db);
    db.recordTask = async () => {
      throw new Error('database unavailable');
    };
    const refused = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1'] });
    expect(refused.status).toBe(500);
    db.recordTask = recordTask;
    // The task created before the record failed must not stay running (it is never run): it would show
    // as running and count against the user's running-batches cap until the process restarts.
    const running = await h.store.listTasks({ owner: 'alice', statuses: ['running'] });
    expect(running.map((t) => t.id)).toEqual([]);
    expect(h.cluster.node('worker-1')?.spec.unschedulable).toBeUndefined();
  });

  it('a batch asked for while the server shuts down gets 503 (try again, another replica takes it), its locks freed', async () => {
    h = await startHarness();
    const alice = await login(h.base, 'alice');
    // SIGTERM: the Finishline server closes first, while the HTTP server still answers (a rolling update's
    // Service routes requests to the pod for a moment more).
    await h.app.progress.close({ timeoutMs: 1000 });
    const refused = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1'] });
    expect(refused.status).toBe(503);
    expect(refused.body.error.code).toBe('shutting_down');
    expect(await h.db.locks('default')).toEqual([]);
  });
});
