import { ErrorCode } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { readStoredTask } from './cursor-storage.js';
import {
  type CursorStorage,
  MemoryCursorStorage,
  persistCursors,
  sessionCursorStorage,
  WebStorageCursorStorage,
  type WebStorageLike,
} from './persist.js';
import { FakeTask } from './testing/fake-server.js';

class MapStorage implements WebStorageLike {
  readonly map = new Map<string, string>();
  broken = false;
  getItem(key: string): string | null {
    if (this.broken) throw new Error('SecurityError');
    return this.map.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    if (this.broken) throw new Error('QuotaExceededError');
    this.map.set(key, value);
  }
  removeItem(key: string): void {
    if (this.broken) throw new Error('SecurityError');
    this.map.delete(key);
  }
}

describe('cursor storage', () => {
  const task = new FakeTask('t1', 3);
  task.item('a');

  it('round-trips a view through Web Storage under the key prefix', () => {
    const backing = new MapStorage();
    const storage = new WebStorageCursorStorage(backing, 'p:');
    storage.save(task.view());
    expect([...backing.map.keys()]).toEqual(['p:t1']);
    expect(readStoredTask(storage, 't1')).toEqual({ task: task.view(), epoch: undefined });
    storage.remove('t1');
    expect(readStoredTask(storage, 't1')).toBeUndefined();
  });

  it('never throws when the storage does, and ignores corrupt or foreign entries', () => {
    const backing = new MapStorage();
    const storage = new WebStorageCursorStorage(backing);
    backing.map.set('finishline:t1', '{not json');
    expect(readStoredTask(storage, 't1')).toBeUndefined();
    backing.map.set('finishline:t1', JSON.stringify({ ...task.view(), id: 't2' }));
    expect(readStoredTask(storage, 't1')).toBeUndefined();
    backing.map.set('finishline:t1', JSON.stringify({ ...task.view(), extra: 1 }));
    expect(readStoredTask(storage, 't1')).toBeUndefined();
    backing.broken = true;
    expect(() => storage.save(task.view())).not.toThrow();
    expect(() => storage.remove('t1')).not.toThrow();
    expect(readStoredTask(storage, 't1')).toBeUndefined();
  });

  it('keeps a copy in memory, not the caller’s object', () => {
    const storage = new MemoryCursorStorage();
    const view = task.view();
    storage.save(view);
    view.done = 99;
    expect(readStoredTask(storage, 't1')?.task.done).toBe(1);
    expect(storage.size).toBe(1);
  });

  it('keeps the epoch with the cursor, validated like a snapshot frame', () => {
    const backing = new MapStorage();
    const storage = new WebStorageCursorStorage(backing);
    storage.save(task.view(), 'epoch-1');
    expect(readStoredTask(storage, 't1')).toEqual({ task: task.view(), epoch: 'epoch-1' });
    backing.map.set('finishline:t1', JSON.stringify({ ...task.view(), epoch: 'not an id!' }));
    expect(readStoredTask(storage, 't1')).toBeUndefined();
  });

  it('binds a storage of your own with persistCursors(): validated reads, views saved as TaskViews', () => {
    const entries = new Map<string, unknown>();
    const own: CursorStorage = {
      load: (taskId) => entries.get(taskId),
      save: (view, epoch) => entries.set(view.id, { ...view, epoch }),
      remove: (taskId) => entries.delete(taskId),
    };
    const persistence = persistCursors(own);
    const view = task.view();
    const watchView = {
      taskId: 't1',
      seq: view.seq,
      status: view.status,
      kind: view.kind,
      progress: {
        total: view.total,
        done: view.done,
        succeeded: view.succeeded,
        failed: view.failed,
        current: view.current,
        message: view.message,
      },
      result: view.result,
      error: view.error,
      updatedAt: view.updatedAt,
      finishedAt: view.finishedAt,
    };
    // Nothing to save before the task's kind is known.
    expect(persistence.saveView({ ...watchView, kind: null }, undefined)).toBe(false);
    expect(entries.size).toBe(0);
    expect(persistence.saveView(watchView, 'epoch-1')).toBe(true);
    expect(persistence.restore('t1')).toEqual({
      task: { ...view, createdAt: view.updatedAt },
      epoch: 'epoch-1',
    });
    entries.set('t1', { ...view, extra: 1 });
    expect(persistence.restore('t1')).toBeUndefined();
    persistence.remove('t1');
    expect(entries.size).toBe(0);
  });

  it('refuses sessionCursorStorage() where there is no sessionStorage, and uses it where there is one', () => {
    expect(() => sessionCursorStorage()).toThrow(
      expect.objectContaining({
        code: ErrorCode.InvalidInput,
        message: expect.stringMatching(/sessionStorage/),
      }),
    );
    const backing = new MapStorage();
    (globalThis as { sessionStorage?: WebStorageLike }).sessionStorage = backing;
    try {
      sessionCursorStorage('s:').save(task.view());
      expect([...backing.map.keys()]).toEqual(['s:t1']);
    } finally {
      delete (globalThis as { sessionStorage?: WebStorageLike }).sessionStorage;
    }
  });
});
