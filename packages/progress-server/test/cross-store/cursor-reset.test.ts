import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ProgressStore, TaskEvent, TaskView, WatchView } from '@finishline/core';
import { MemoryProgressStore, PROTOCOL_NAME_V1, PROTOCOL_VERSION } from '@finishline/core';
import { WatchCursor } from '@finishline/core/internal';
import { PostgresProgressStore } from '@finishline/postgres';
import { SqliteProgressStore } from '@finishline/sqlite';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import type { ProgressServer } from '../../src/progress-server.js';
import { RawClient, type Received, serverFrameViolations, sleep } from '../../src/testing/harness.js';
import { listenOn, PG_URL } from './stores.js';

/**
 * Issue 14, found #1: a cursor ahead of the store (a restored database, a purged id reused) must never
 * wait forever. The server answers it with a snapshot marked `reset`; a client following the rules of
 * docs/protocol.md (here: core's WatchCursor, the reference of those rules) starts over from it.
 */

const cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  expect(serverFrameViolations.splice(0)).toEqual([]);
});

async function serve(store: ProgressStore): Promise<{ server: ProgressServer; wsUrl: string }> {
  const { server, wsUrl } = await listenOn(store, { heartbeatIntervalMs: 200 });
  cleanups.push(() => server.close({ timeoutMs: 1000 }));
  return { server, wsUrl };
}

async function connect(wsUrl: string, protocols?: string[]): Promise<RawClient> {
  const client = await RawClient.connect(wsUrl, { user: 'alice', ...(protocols ? { protocols } : {}) });
  cleanups.push(async () => {
    await client.close();
  });
  return client;
}

/**
 * A watcher that applies docs/protocol.md's client rules to one task on one socket, from a cursor, and
 * resolves with the final view once the terminal state was applied (and acknowledged).
 */
function watch(client: RawClient, taskId: string, afterSeq: number): Promise<WatchView> {
  let cursor = new WatchCursor(taskId, { afterSeq });
  const from = client.frames.length;
  client.send({ type: 'subscribe', taskId, afterSeq });
  return new Promise((resolve, reject) => {
    let index = from;
    const timer = setInterval(() => {
      for (; index < client.frames.length; index += 1) {
        const frame = client.frames[index] as Received;
        let result: ReturnType<WatchCursor['applyEvent']> | undefined;
        if (frame.type === 'snapshot' && (frame.task as TaskView).id === taskId) {
          if (frame.reset === true) cursor = new WatchCursor(taskId);
          result = cursor.applySnapshot(frame.task as TaskView, frame.reset === true);
        } else if (frame.type === 'event' && (frame.event as TaskEvent).taskId === taskId) {
          result = cursor.applyEvent(frame.event as TaskEvent);
        } else if (frame.type === 'error' && frame.taskId === taskId) {
          clearInterval(timer);
          reject(new Error(`error frame ${JSON.stringify(frame)}`));
          return;
        }
        if (result?.gap) client.send({ type: 'subscribe', taskId, afterSeq: cursor.seq });
        if (cursor.finished) {
          clearInterval(timer);
          client.send({ type: 'ack', taskId, seq: cursor.seq });
          resolve(cursor.view);
          return;
        }
      }
    }, 5);
    setTimeout(() => {
      clearInterval(timer);
      reject(new Error(`${taskId}: no terminal state; cursor ${cursor.seq}`));
    }, 8000);
  });
}

describe('a cursor ahead of the task', () => {
  it('found #1: afterSeq 9 on a task at seq 2 gets a reset snapshot, and the watcher reaches the end', async () => {
    const store = new MemoryProgressStore();
    const { wsUrl } = await serve(store);
    const task = await store.createTask({ owner: 'alice', kind: 'job', total: 2 });
    await store.append(task.id, { type: 'progress', done: 1 });
    await store.append(task.id, { type: 'progress', done: 2 });
    const client = await connect(wsUrl);
    expect(client.frames[0]).toMatchObject({
      type: 'hello',
      protocol: PROTOCOL_VERSION,
      epoch: await store.getEpoch(),
    });
    const finished = watch(client, task.id, 9);
    const reset = await client.next((frame) => frame.type === 'snapshot');
    expect(reset).toMatchObject({ reset: true, epoch: await store.getEpoch(), task: { seq: 2 } });
    await store.append(task.id, { type: 'completed', result: { ok: true } });
    const view = await finished;
    expect(view).toMatchObject({ seq: 3, status: 'completed', result: { ok: true } });
  });

  it('a terminal task behind the cursor is re-sent (reset) until acknowledged', async () => {
    const store = new MemoryProgressStore();
    const { wsUrl } = await serve(store);
    const task = await store.createTask({ owner: 'alice', kind: 'job' });
    await store.append(task.id, { type: 'completed' });
    const client = await connect(wsUrl);
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 5 });
    await client.next((frame) => frame.type === 'snapshot' && frame.reset === true);
    // Not acknowledged: the terminal snapshot comes again (retry after 100 ms).
    const again = await client.next((frame) => frame.type === 'snapshot', { from: client.frames.length });
    expect(again).toMatchObject({ reset: true, task: { seq: 1, status: 'completed' } });
  });

  it('a version-1 socket gets version-1 frames: no epoch, no reset (old clients unchanged)', async () => {
    const store = new MemoryProgressStore();
    const { wsUrl } = await serve(store);
    const task = await store.createTask({ owner: 'alice', kind: 'job' });
    await store.append(task.id, { type: 'progress', done: 1 });
    const client = await connect(wsUrl, [PROTOCOL_NAME_V1]);
    expect(client.ws.protocol).toBe(PROTOCOL_NAME_V1);
    expect(client.frames[0]).toEqual(expect.objectContaining({ type: 'hello', protocol: 1 }));
    expect(client.frames[0]).not.toHaveProperty('epoch');
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 9 });
    const snapshot = await client.next((frame) => frame.type === 'snapshot');
    expect(snapshot).not.toHaveProperty('reset');
    expect(snapshot).not.toHaveProperty('epoch');
  });
});

/** A store that can be backed up, then restored from that older copy (with the servers restarted). */
interface Restorable {
  name: string;
  open(): Promise<ProgressStore>;
  backup(store: ProgressStore): Promise<void>;
  /** Closes `store`, restores the backup, and opens the store again. */
  restore(store: ProgressStore): Promise<ProgressStore>;
}

function sqliteRestorable(): Restorable {
  const dir = mkdtempSync(join(tmpdir(), 'finishline-restore-'));
  const file = join(dir, 'progress.db');
  const copy = join(dir, 'backup.db');
  cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
  const sidecars = (path: string) => [`${path}-wal`, `${path}-shm`];
  return {
    name: 'sqlite (file copy)',
    open: async () => new SqliteProgressStore({ database: file }),
    backup: async (store) => {
      // A cold copy, as an operator's file backup would be: the store closed, the WAL folded in.
      await store.close();
      copyFileSync(file, copy);
      for (const path of sidecars(file))
        if (existsSync(path)) copyFileSync(path, `${copy}${path.slice(file.length)}`);
    },
    restore: async (store) => {
      await store.close();
      for (const path of sidecars(file)) rmSync(path, { force: true });
      copyFileSync(copy, file);
      for (const path of sidecars(copy))
        if (existsSync(path)) copyFileSync(path, `${file}${path.slice(copy.length)}`);
      return new SqliteProgressStore({ database: file });
    },
  };
}

function postgresRestorable(): Restorable {
  const schema = `restore_${Math.random().toString(36).slice(2, 10)}`;
  const pool = new pg.Pool({ connectionString: PG_URL, max: 6 });
  pool.on('error', () => {});
  const q = (text: string) => pool.query(text);
  const s = pg.escapeIdentifier(schema);
  cleanups.push(async () => {
    await q(`DROP SCHEMA IF EXISTS ${s} CASCADE`);
    await q(`DROP SCHEMA IF EXISTS ${pg.escapeIdentifier(`${schema}_bak`)} CASCADE`);
    await pool.end();
  });
  const bak = pg.escapeIdentifier(`${schema}_bak`);
  return {
    name: 'postgres (tables restored from a copy)',
    open: () => PostgresProgressStore.open({ pool, schema }),
    backup: async () => {
      await q(`CREATE SCHEMA ${bak}`);
      await q(`CREATE TABLE ${bak}.tasks AS TABLE ${s}.tasks`);
      await q(`CREATE TABLE ${bak}.events AS TABLE ${s}.events`);
    },
    restore: async (store) => {
      await store.close();
      await q(`BEGIN; TRUNCATE ${s}.tasks, ${s}.events;
        INSERT INTO ${s}.tasks SELECT * FROM ${bak}.tasks;
        INSERT INTO ${s}.events SELECT * FROM ${bak}.events; COMMIT`);
      return PostgresProgressStore.open({ pool, schema });
    },
  };
}

describe.each([sqliteRestorable, postgresRestorable])('a store restored from an older copy', (make) => {
  it('every watcher holding a cursor ahead reaches the terminal state', async () => {
    const restorable = make();
    let store = await restorable.open();
    const tasks: string[] = [];
    for (let i = 0; i < 4; i += 1) {
      const task = await store.createTask({ owner: 'alice', kind: 'job', total: 20 });
      await store.append(task.id, { type: 'progress', done: 1 });
      await store.append(task.id, { type: 'progress', done: 2 });
      tasks.push(task.id);
    }
    await restorable.backup(store);
    // (The SQLite backup closed the store: reopen it.)
    store = restorable.name.startsWith('sqlite') ? await restorable.open() : store;
    for (const id of tasks) {
      for (let done = 3; done <= 9; done += 1) await store.append(id, { type: 'progress', done });
    }
    // Watchers follow every task up to seq 9 on the original store.
    let { server, wsUrl } = await serve(store);
    const client = await connect(wsUrl);
    for (const id of tasks) client.send({ type: 'subscribe', taskId: id, afterSeq: 0 });
    for (const id of tasks)
      await client.next((frame) => frame.type === 'snapshot' && (frame.task as TaskView).id === id);
    await client.close();
    await server.close({ timeoutMs: 1000 });

    // The store goes back to the copy at seq 2; the watchers come back with cursors at 9.
    store = await restorable.restore(store);
    ({ server, wsUrl } = await serve(store));
    const watchers = await Promise.all(tasks.map(() => connect(wsUrl)));
    const finished = tasks.map((id, i) => watch(watchers[i] as RawClient, id, 9));
    await sleep(50);
    for (const id of tasks) {
      await store.append(id, { type: 'progress', done: 3 });
      await store.append(id, { type: 'completed', result: { id } });
    }
    const views = await Promise.all(finished);
    for (const [i, view] of views.entries()) {
      expect(view).toMatchObject({ seq: 4, status: 'completed', result: { id: tasks[i] } });
    }
    cleanups.push(() => store.close());
  });
});
