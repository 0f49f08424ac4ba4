// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
/**
 * A drain that fails after its cordon leaves the node cordoned (as kubectl drain does), but the note of who
 * cordoned it and why was saved only for a drained node: the node table showed a cordon nobody had made.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { type Harness, login, startHarness, waitForTask } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('a drain that fails after cordoning the node', () => {
  it('keeps the cordon’s note (who, why) on the node it left cordoned', async () => {
    h = await startHarness({
      cluster: {
        onRequest: ({ method, path }) => {
          if (method === 'POST' && path.endsWith('/eviction')) throw new Error('injected eviction failure');
        },
      },
    });
    const alice = await login(h.base, 'alice');
    const started = await alice.post('/api/batch', {
      operation: 'drain',
      nodes: ['worker-1'],
      reason: 'kernel update',
    });
    expect(started.status).toBe(202);
    const { task } = await waitForTask(alice, started.body.taskId);
    expect(task).toMatchObject({ failed: 1 });
    expect(h.cluster.node('worker-1')?.spec.unschedulable).toBe(true);
    const node = (await alice.get('/api/nodes')).body.nodes.find((n: any) => n.name === 'worker-1');
    expect(node.cordon).toMatchObject({ reason: 'kernel update', by: 'alice' });
  });
});
