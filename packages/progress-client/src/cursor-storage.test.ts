import type { TaskView, WatchView } from '@finishline/core';
import { ErrorCode } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { readStoredTask } from './cursor-storage.js';
import {
  type CursorStorage,
  cursorKey,
  MemoryCursorStorage,
  persistCursors,
  sessionCursorStorage,
  WebStorageCursorStorage,
  type WebStorageLike,
} from './persist.js';
import { FakeTask } from './testing/fake-server.js';
import { setup } from './testing/harness.js';

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

/** Web Storage as browsers have it: with `length` and `key()`, and a quota of `capacity` entries. */
class QuotaStorage extends MapStorage {
  constructor(readonly capacity = Number.POSITIVE_INFINITY) {
    super();
  }
  get length(): number {
    return this.map.size;
  }
  key(index: number): string | null {
    return [...this.map.keys()][index] ?? null;
  }
  override setItem(key: string, value: string): void {
    if (!this.map.has(key) && this.map.size >= this.capacity)
      throw new DOMException('The quota has been exceeded.', 'QuotaExceededError');
    super.setItem(key, value);
  }
}

/** A watch's view of `task`, as the client hands it to `saveView`. */
function watchViewOf(task: FakeTask): WatchView {
  const view = task.view();
  return {
    taskId: view.id,
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
}

/** What a restore returns of a view saved from {@link watchViewOf} (the cursor does not keep `createdAt`). */
const restoredOf = (task: FakeTask, epoch?: string) => ({
  task: { ...task.view(), createdAt: task.view().updatedAt },
  epoch,
});

const A = 'ws://a.test/progress';
const B = 'ws://b.test/progress';

describe('cursor storage', () => {
  const task = new FakeTask('t1', 3);
  task.item('a');
  /** The entry a client of server `A` saves for `task`. */
  const entryOf = (view: TaskView, scope = A) => ({ ...view, id: cursorKey(view.id, scope) });

  it('round-trips a view through Web Storage under the key prefix, the task id and the server', () => {
    const backing = new MapStorage();
    const storage = new WebStorageCursorStorage(backing, 'p:');
    const cursors = storage.forServer(A);
    expect(cursors.saveView(watchViewOf(task), undefined)).toBe(true);
    expect([...backing.map.keys()]).toEqual(['p:t1 ws://a.test/progress']);
    expect(cursors.restore('t1')).toEqual(restoredOf(task));
    cursors.remove('t1');
    expect(backing.map.size).toBe(0);
    expect(cursors.restore('t1')).toBeUndefined();
  });

  it('never throws when the storage does, and ignores corrupt or foreign entries', () => {
    const backing = new MapStorage();
    const storage = new WebStorageCursorStorage(backing);
    const cursors = storage.forServer(A);
    const key = `finishline:${cursorKey('t1', A)}`;
    backing.map.set(key, '{not json');
    expect(cursors.restore('t1')).toBeUndefined();
    backing.map.set(key, JSON.stringify({ ...task.view(), id: cursorKey('t2', A) }));
    expect(cursors.restore('t1')).toBeUndefined();
    backing.map.set(key, JSON.stringify({ ...entryOf(task.view()), extra: 1 }));
    expect(cursors.restore('t1')).toBeUndefined();
    backing.broken = true;
    expect(() => cursors.saveView(watchViewOf(task), undefined)).not.toThrow();
    expect(() => cursors.remove('t1')).not.toThrow();
    expect(cursors.restore('t1')).toBeUndefined();
  });

  it('keeps a copy in memory, not the caller’s object', () => {
    const storage = new MemoryCursorStorage();
    const entry = entryOf(task.view());
    storage.save(entry);
    entry.done = 99;
    expect(readStoredTask(storage, 't1', cursorKey('t1', A))?.task.done).toBe(1);
    expect(storage.size).toBe(1);
  });

  it('keeps the epoch with the cursor, validated like a snapshot frame', () => {
    const backing = new MapStorage();
    const cursors = new WebStorageCursorStorage(backing).forServer(A);
    cursors.saveView(watchViewOf(task), 'epoch-1');
    expect(cursors.restore('t1')).toEqual(restoredOf(task, 'epoch-1'));
    backing.map.set(
      `finishline:${cursorKey('t1', A)}`,
      JSON.stringify({ ...entryOf(task.view()), epoch: 'not an id!' }),
    );
    expect(cursors.restore('t1')).toBeUndefined();
  });

  it('keeps the cursors of two servers apart when their tasks share an id', () => {
    const other = new FakeTask('t1', 9);
    for (const key of ['x', 'y', 'z']) other.item(key);
    for (const storage of [new MemoryCursorStorage(), new WebStorageCursorStorage(new MapStorage())]) {
      const [onA, onB] = [storage.forServer(A), storage.forServer(B)];
      onA.saveView(watchViewOf(task), undefined);
      expect(onB.restore('t1')).toBeUndefined();
      onB.saveView(watchViewOf(other), undefined);
      expect(onA.restore('t1')).toEqual(restoredOf(task));
      expect(onB.restore('t1')).toEqual(restoredOf(other));
      // The terminal of one server's task forgets its cursor only.
      onA.remove('t1');
      expect(onA.restore('t1')).toBeUndefined();
      expect(onB.restore('t1')).toEqual(restoredOf(other));
      // A client of the same URL (the page reloaded) finds the cursor again.
      expect(storage.forServer(B).restore('t1')).toEqual(restoredOf(other));
    }
  });

  it('reads no entry of an earlier version: saved under the bare task id, it does not say which server it came from', () => {
    const backing = new MapStorage();
    const cursors = new WebStorageCursorStorage(backing).forServer(A);
    backing.map.set('finishline:t1', JSON.stringify({ ...task.view(), epoch: 'epoch-1' }));
    expect(cursors.restore('t1')).toBeUndefined();
  });

  it('binds a storage of your own with persistCursors(): validated reads, views saved as TaskViews under their key', () => {
    const entries = new Map<string, unknown>();
    const own: CursorStorage = {
      load: (key) => entries.get(key),
      save: (entry, epoch) => entries.set(entry.id, { ...entry, epoch }),
      remove: (key) => entries.delete(key),
    };
    const cursors = persistCursors(own).forServer(A);
    // Nothing to save before the task's kind is known.
    expect(cursors.saveView({ ...watchViewOf(task), kind: null }, undefined)).toBe(false);
    expect(entries.size).toBe(0);
    expect(cursors.saveView(watchViewOf(task), 'epoch-1')).toBe(true);
    expect([...entries.keys()]).toEqual([cursorKey('t1', A)]);
    expect(cursors.restore('t1')).toEqual(restoredOf(task, 'epoch-1'));
    expect(persistCursors(own).forServer(B).restore('t1')).toBeUndefined();
    entries.set(cursorKey('t1', A), { ...entryOf(task.view()), extra: 1 });
    expect(cursors.restore('t1')).toBeUndefined();
    cursors.remove('t1');
    expect(entries.size).toBe(0);
  });

  it('refuses another scope’s entry from a storage of your own that ignores keys', () => {
    let slot: unknown;
    const oneSlot: CursorStorage = {
      load: () => slot,
      save: (entry, epoch) => {
        slot = { ...entry, epoch };
      },
      remove: () => {
        slot = undefined;
      },
    };
    persistCursors(oneSlot).forServer(A).saveView(watchViewOf(task), undefined);
    expect(persistCursors(oneSlot).forServer(B).restore('t1')).toBeUndefined();
    expect(persistCursors(oneSlot).forServer(A).restore('t1')).toEqual(restoredOf(task));
  });

  it('keeps the query string out of the keys (a token for tokenQueryParam): scoped by the URL without it', () => {
    const backing = new MapStorage();
    const storage = new WebStorageCursorStorage(backing);
    storage.forServer(`${A}?access_token=s3cret-1`).saveView(watchViewOf(task), undefined);
    expect([...backing.map.keys()]).toEqual([`finishline:${cursorKey('t1', A)}`]);
    // The next load of the page, its token renewed, finds the cursor.
    expect(storage.forServer(`${A}?access_token=s3cret-2`).restore('t1')).toEqual(restoredOf(task));
    const own = new MemoryCursorStorage();
    persistCursors(own).forServer(`${A}?access_token=s3cret-1#x`).saveView(watchViewOf(task), undefined);
    expect(own.load(cursorKey('t1', A))).toMatchObject({ id: cursorKey('t1', A), seq: 1 });
  });

  it('refuses a storage without its methods (undefined from a misspelt global, a Map) instead of persisting nothing', () => {
    const refused = (message: string) =>
      expect.objectContaining({ code: ErrorCode.InvalidInput, message: expect.stringContaining(message) });
    const misspelt = (globalThis as { localstorage?: WebStorageLike }).localstorage;
    expect(() => new WebStorageCursorStorage(misspelt as WebStorageLike)).toThrow(
      refused('WebStorageCursorStorage: storage must have a getItem() method'),
    );
    expect(() => persistCursors(new Map() as unknown as CursorStorage)).toThrow(
      refused('persistCursors: storage must have a load() method'),
    );
    expect(() => persistCursors(new MemoryCursorStorage())).not.toThrow();
  });

  it('refuses a maxEntries that is not an integer >= 0 (or Infinity) with invalid_input', () => {
    // Before, -1 or 2.5 made the first save's sweep read past its entries and throw (caught: that save
    // was lost without a word), and NaN silently never swept.
    for (const bad of [-1, 2.5, Number.NaN, '10' as unknown as number])
      expect(() => new WebStorageCursorStorage(new QuotaStorage(), 'p:', bad)).toThrow(
        expect.objectContaining({
          code: ErrorCode.InvalidInput,
          message: expect.stringContaining('WebStorageCursorStorage: maxEntries must be an integer >= 0'),
        }),
      );
    for (const good of [0, 1, 1000, Number.POSITIVE_INFINITY]) {
      const backing = new QuotaStorage();
      const cursors = new WebStorageCursorStorage(backing, 'p:', good).forServer(A);
      expect(cursors.saveView(watchViewOf(task), undefined)).toBe(true);
      expect(cursors.restore('t1')).toEqual(restoredOf(task));
    }
  });

  it('shares the cursors of clients given one scope, whatever their URLs', () => {
    const storage = new MemoryCursorStorage();
    persistCursors(storage, 'orders').forServer(A).saveView(watchViewOf(task), undefined);
    expect(storage.load(cursorKey('t1', 'orders'))).toMatchObject({ seq: 1 });
    expect(persistCursors(storage, 'orders').forServer(B).restore('t1')).toEqual(restoredOf(task));
    expect(storage.forServer(B).restore('t1')).toBeUndefined();
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
      sessionCursorStorage('s:').forServer(A).saveView(watchViewOf(task), undefined);
      expect([...backing.map.keys()]).toEqual([`s:${cursorKey('t1', A)}`]);
    } finally {
      delete (globalThis as { sessionStorage?: WebStorageLike }).sessionStorage;
    }
  });

  it('a storage of your own whose save and remove throw (a full quota) costs only the resume: acks, the unsubscribe and close() still go', async () => {
    const full: CursorStorage = {
      load: () => undefined,
      save: () => {
        throw new DOMException('The quota has been exceeded.', 'QuotaExceededError');
      },
      remove: () => {
        throw new DOMException('The quota has been exceeded.', 'QuotaExceededError');
      },
    };
    const { client, server, scheduler } = setup({ persistence: persistCursors(full), ackDelayMs: 0 });
    const [first, second] = [client.watch('t1'), client.watch('t2')];
    const socket = server.accept();
    const one = new FakeTask('t1', 2);
    socket.push({ type: 'snapshot', task: one.view() });
    socket.push({ type: 'event', event: one.item('a') });
    await scheduler.advance(0);
    // Before, the save's throw left the ack unsent (and out of the socket's message handler).
    expect(socket.frames('ack')).toEqual([{ type: 'ack', taskId: 't1', seq: 1 }]);
    socket.push({ type: 'event', event: one.end() });
    await first.done;
    // Before, the remove's throw kept the terminal ack and the unsubscribe from going out.
    expect(socket.frames('ack').at(-1)).toEqual({ type: 'ack', taskId: 't1', seq: 2 });
    expect(socket.frames('unsubscribe')).toEqual([{ type: 'unsubscribe', taskId: 't1' }]);
    // Before, close() threw to the page and the watch's subscription stayed.
    expect(() => second.close()).not.toThrow();
    expect(socket.frames('unsubscribe').at(-1)).toEqual({ type: 'unsubscribe', taskId: 't2' });
    await client.close();
  });

  it('an async storage of your own whose load, save and remove reject leaves no rejection unhandled', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const quota = () =>
        Promise.reject(new DOMException('The quota has been exceeded.', 'QuotaExceededError'));
      const failing = { load: quota, save: quota, remove: quota } as unknown as CursorStorage;
      const { client, server, scheduler } = setup({ persistence: persistCursors(failing), ackDelayMs: 0 });
      const watch = client.watch('t1');
      const socket = server.accept();
      const one = new FakeTask('t1', 2);
      socket.push({ type: 'snapshot', task: one.view() });
      socket.push({ type: 'event', event: one.item('a') });
      await scheduler.advance(0);
      socket.push({ type: 'event', event: one.end() });
      await watch.done;
      expect(socket.frames('unsubscribe')).toEqual([{ type: 'unsubscribe', taskId: 't1' }]);
      await client.close();
      await new Promise((resolve) => setImmediate(resolve));
      await new Promise((resolve) => setImmediate(resolve));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('sweeps its entries over localStorage: keeps the most recently updated at its first save, and makes room when the quota is full', () => {
    /** An entry a watch of task `id` left behind, last updated at `updatedAt`. */
    const leftBehind = (backing: QuotaStorage, id: string, updatedAt: number) =>
      backing.map.set(
        `finishline:${cursorKey(id, A)}`,
        JSON.stringify({ ...entryOf(task.view()), id: cursorKey(id, A), updatedAt }),
      );
    const backing = new QuotaStorage();
    for (let index = 1; index <= 5; index++) leftBehind(backing, `old-${index}`, index);
    backing.map.set('finishline:theirs', '{"id":"not ours"}');
    backing.map.set('app-setting', 'x');
    const cursors = new WebStorageCursorStorage(backing, 'finishline:', 3).forServer(A);
    expect(cursors.saveView(watchViewOf(task), undefined)).toBe(true);
    // Before, nothing was ever swept: entries left by earlier loads of the page added up for ever.
    expect([...backing.map.keys()].sort()).toEqual(
      [
        'app-setting',
        'finishline:theirs',
        `finishline:${cursorKey('old-3', A)}`,
        `finishline:${cursorKey('old-4', A)}`,
        `finishline:${cursorKey('old-5', A)}`,
        `finishline:${cursorKey('t1', A)}`,
      ].sort(),
    );
    expect(cursors.restore('t1')).toEqual(restoredOf(task));

    // A full quota: the older half of the entries goes, and the write is tried once more.
    const full = new QuotaStorage(6);
    for (let index = 1; index <= 4; index++) leftBehind(full, `old-${index}`, index);
    full.map.set('app-setting', 'x');
    full.map.set('app-other', 'y');
    const fullCursors = new WebStorageCursorStorage(full).forServer(A);
    // Before, the write was refused and the cursor lost: the watch's resume after a reload with it.
    expect(fullCursors.saveView(watchViewOf(task), undefined)).toBe(true);
    expect(fullCursors.restore('t1')).toEqual(restoredOf(task));
    expect(full.map.has(`finishline:${cursorKey('old-1', A)}`)).toBe(false);
    expect(full.map.has(`finishline:${cursorKey('old-4', A)}`)).toBe(true);
    expect(full.map.has('app-other')).toBe(true);
  });

  it('gives a storage that keeps nothing, instead of throwing, where reading sessionStorage is denied (a sandboxed frame, storage blocked)', () => {
    // Browsers throw a SecurityError from the `sessionStorage` getter itself there.
    Object.defineProperty(globalThis, 'sessionStorage', {
      configurable: true,
      get: () => {
        throw new DOMException('Access is denied for this document.', 'SecurityError');
      },
    });
    try {
      // Before, the SecurityError came out of sessionCursorStorage(): a page creating its client with
      // `persistence: sessionCursorStorage()` failed to load, though persistence is best effort.
      const cursors = sessionCursorStorage().forServer(A);
      expect(cursors.saveView(watchViewOf(task), undefined)).toBe(true);
      expect(cursors.restore('t1')).toBeUndefined();
      expect(() => cursors.remove('t1')).not.toThrow();
    } finally {
      delete (globalThis as { sessionStorage?: WebStorageLike }).sessionStorage;
    }
  });
});
