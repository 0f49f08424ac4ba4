// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
import { afterEach, describe, expect, it } from 'vitest';
import { type Harness, login, startHarness } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('the task list, page by page', () => {
  it('loses no batch at a page boundary between batches recorded in the same millisecond', async () => {
    h = await startHarness();
    const ada = await login(h.base, 'ada');
    const at = Date.now() - 60_000;
    const ids = Array.from({ length: 5 }, (_, i) => `task-${i}`);
    for (const id of ids) {
      await h.db.recordTask({
        taskId: id,
        cluster: 'default',
        username: 'alice',
        operation: { type: 'cordon' },
        nodes: ['worker-1'],
        parentTaskId: null,
        relation: null,
        createdAt: at,
      });
    }
    const seen: string[] = [];
    let query = '';
    for (let page = 0; page < 10; page++) {
      const { body } = await ada.get(`/api/tasks?scope=all&limit=2${query}`);
      const rows = body.tasks as any[];
      seen.push(...rows.map((t) => t.id));
      if (rows.length < 2) break;
      // The page's next-page link, as the audit page builds it from its last row.
      const last = rows[rows.length - 1];
      query = `&before=${last.createdAt}&beforeId=${encodeURIComponent(last.id)}`;
    }
    expect(seen.sort()).toEqual(ids);
  });
});
