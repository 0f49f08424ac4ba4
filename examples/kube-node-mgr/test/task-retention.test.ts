import { MemoryProgressStore } from '@finishline/core';
import { afterEach, describe, expect, it } from 'vitest';
import { createApp } from '../src/server/app.js';
import { type Harness, login, startHarness, waitForTask } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('task retention', () => {
  it('deletes a finished batch once older than taskRetentionMs, and keeps a running one', async () => {
    h = await startHarness({ app: { taskRetentionMs: 1000, retentionIntervalMs: 50 } });
    const alice = await login(h.base, 'alice');
    const started = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1'] });
    expect(started.status).toBe(202);
    const taskId = started.body.taskId as string;
    expect((await waitForTask(alice, taskId)).task.status).toBe('completed');
    const running = await h.store.createTask({ id: 'still-running', owner: 'alice', kind: 'batch_cordon' });
    // Before, the example never called purgeFinished: every finished batch stayed for ever.
    let status = 200;
    for (let tries = 0; tries < 400 && status !== 404; tries++) {
      await new Promise((resolve) => setTimeout(resolve, 25));
      status = (await alice.get(`/progress/tasks/${encodeURIComponent(taskId)}`)).status;
    }
    expect(status, 'the finished batch, after retention').toBe(404);
    expect(await h.store.getTask(taskId)).toBeUndefined();
    // Its record stays for the audit page; the read back of its nodes is of a task that is no more, not
    // (as it answered before) `409 task_running`, "the task is still running".
    const unrecorded = await alice.get(`/api/tasks/${encodeURIComponent(taskId)}/unrecorded`);
    expect(unrecorded.status, 'its nodes read back, after retention').toBe(404);
    expect(unrecorded.body.error.code).toBe('task_not_found');
    expect((await h.store.getTask(running.id))?.status, 'a running task').toBe('running');
  });

  it('refuses a retention interval or age that is not a whole number in range', () => {
    const cases = [
      { retentionIntervalMs: 0 },
      { retentionIntervalMs: 2 ** 31 },
      { taskRetentionMs: -1 },
      { taskRetentionMs: 1.5 },
    ];
    for (const app of cases) {
      // Refused before anything is built: the session manager and database are never touched.
      expect(
        () => createApp({ store: new MemoryProgressStore(), sessions: {} as never, db: {} as never, ...app }),
        JSON.stringify(app),
      ).toThrow(/must be an integer/);
    }
  });
});
