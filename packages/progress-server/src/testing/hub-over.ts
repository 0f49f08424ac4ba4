import type { ChangeListener, MemoryProgressStore, ProgressStore, TaskChange } from '@finishline/core';
import { afterEach } from 'vitest';
import { FairReads } from '../hub/fair-reads.js';
import { TaskHub } from '../hub/task-hub.js';
import { silentLogger } from '../logger.js';
import { ServerMetrics } from '../metrics.js';

/** The page size of the hub's own store reads: what `afterRead` is told for them (a stream's is `maxReplayEvents`, 100 here). */
export const HUB_READ = 1000;

/**
 * Hubs for a test file, each closed after its test. Call once at the top of the file.
 *
 * @internal
 */
export function useHubs() {
  const closers: Array<() => void> = [];
  afterEach(() => {
    for (const close of closers.splice(0)) close();
  });

  /**
   * A hub over `store` whose change feed the test drives through `emit` when `driven` (as Postgres's
   * `NOTIFY` does, with events, and maybe late), else over the store's own feed. `afterRead` runs after
   * each of the store's `readEvents` has read and before it resolves (`limit`: the reader's page size,
   * 1000 for the hub's own reads, `maxReplayEvents` (100) for a stream's). `wentBack` counts the hub's
   * signs that the store went back. `store` may be a test's own view of a memory store (the three
   * members the hub reads), to count or gate its reads.
   */
  function hubOver(
    store: Pick<MemoryProgressStore, 'changes' | 'getTask' | 'readEvents'>,
    driven: boolean,
    afterRead?: (limit: number | undefined) => Promise<void>,
  ) {
    const listeners = new Set<ChangeListener>();
    const changes = driven
      ? {
          subscribe: (listener: ChangeListener) => {
            listeners.add(listener);
            return () => listeners.delete(listener);
          },
        }
      : store.changes;
    const seen = {
      changes,
      getTask: (taskId: string) => store.getTask(taskId),
      readEvents: async (taskId: string, afterSeq: number, limit?: number) => {
        const events = await store.readEvents(taskId, afterSeq, limit);
        await afterRead?.(limit);
        return events;
      },
    } as unknown as ProgressStore;
    const reads = new FairReads({ maxConcurrent: 4, maxPerPrincipal: 2 });
    let wentBack = 0;
    const hub = new TaskHub({
      store: seen,
      logger: silentLogger,
      metrics: new ServerMetrics({ registry: undefined, prefix: 'test_', feed: store.changes }),
      retryDelayMs: 5,
      reads,
      maxReplayEvents: 100,
      onWentBack: () => {
        wentBack += 1;
      },
    });
    hub.start();
    closers.push(() => {
      hub.close();
      reads.close();
    });
    const emit = (change: TaskChange) => {
      for (const listener of listeners) listener(change);
    };
    return { hub, emit, wentBack: () => wentBack };
  }

  return { hubOver };
}
