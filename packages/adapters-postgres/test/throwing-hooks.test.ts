import { ErrorCode, type ProgressError } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { eventually, Recorder, settlesWithin, storeFixtures } from './support.js';

/**
 * The store's hooks (`onError`, `onListenerError`) are the caller's logging: one that throws (a logger
 * that fails) must not stop the store's background work or leave an append unsettled.
 */

const { admin, migrated, open } = storeFixtures('hooks');

describe('a hook that throws', () => {
  it('onError: the LISTEN connection still reconnects after it was lost, and hears later commits', async () => {
    const schema = await migrated();
    const thrown: unknown[] = [];
    const warnings: Error[] = [];
    const onWarning = (warning: Error) => warnings.push(warning);
    process.on('warning', onWarning);
    const observer = await open({
      schema,
      reconnect: { initialDelayMs: 5, maxDelayMs: 20 },
      onError: (error) => {
        thrown.push(error);
        throw new Error('the logger is down');
      },
    });
    const writer = await open({ schema });
    const recorder = new Recorder(observer);
    await writer.createTask({ id: 'x', owner: 'alice', kind: 'k' });
    const pid = observer.changes.health().listenerPid;
    expect(pid).not.toBeNull();
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    await eventually('the hook is told of the loss', () => thrown.length > 0);
    await eventually('the observer reconnects', () => observer.changes.health().connected);
    await writer.append('x', { type: 'progress' });
    await eventually('the change after the reconnect', () => recorder.has('x', 1));
    // Said once, however often the hook threw.
    await eventually('the warning', () => warnings.length > 0);
    process.off('warning', onWarning);
    expect(
      warnings.filter((w) => (w as { code?: string }).code === 'FINISHLINE_POSTGRES_ON_ERROR_THREW'),
    ).toHaveLength(1);
  });

  it('clock: a LISTEN connection replaced while the clock throws still reconnects, and hears later commits', async () => {
    const schema = await migrated();
    let broken = false;
    const reported: ProgressError[] = [];
    const observer = await open({
      schema,
      // No safety net: what the observer hears comes from notifications and re-reads alone.
      pollIntervalMs: 3_600_000,
      clock: () => (broken ? Number.NaN : Date.now()),
      onError: (error) => reported.push(error),
    });
    const writer = await open({ schema });
    const recorder = new Recorder(observer);
    await writer.createTask({ id: 'x', owner: 'alice', kind: 'k' });
    expect(observer.changes.health().connected).toBe(true);
    // What a restore noticed asks of the feed (the server's hub calls it on a renewed epoch). Until
    // 7 December 2026 the clock's throw came halfway through: the old connection's notifications ignored
    // from then on, no new one opened, and the feed still said connected, for the life of the store.
    broken = true;
    expect(() => observer.changes.forgetSeqs()).not.toThrow();
    broken = false;
    expect(reported.map((error) => error.code)).toEqual([ErrorCode.Internal]);
    await eventually('the observer listens again', () => observer.changes.health().connected);
    await writer.append('x', { type: 'progress' });
    await eventually('the change after the replacement', () => recorder.has('x', 1));
  });

  it('clock: a call that reads a clock which throws rejects with internal, the throw as its cause', async () => {
    // Until 7 December 2026 createTask, reapExpiredLeases and purgeFinished rejected with the bare error (no
    // code) and append and renewLease with store_unavailable, as if the database had failed.
    const schema = await migrated();
    const thrown = new Error('clock broke');
    let broken = false;
    const store = await open({
      schema,
      clock: () => {
        if (broken) throw thrown;
        return Date.now();
      },
    });
    await store.createTask({ id: 'x', owner: 'alice', kind: 'k' });
    broken = true;
    const calls: Array<[string, () => Promise<unknown>]> = [
      ['createTask', () => store.createTask({ id: 'y', owner: 'alice', kind: 'k' })],
      ['append', () => store.append('x', { type: 'progress' })],
      ['renewLease', () => store.renewLease('x', 'worker-1', 1_000)],
      ['reapExpiredLeases', () => store.reapExpiredLeases()],
      ['purgeFinished', () => store.purgeFinished({ olderThanMs: 0 })],
    ];
    for (const [what, call] of calls) {
      await expect(call(), what).rejects.toMatchObject({ code: ErrorCode.Internal, cause: thrown });
    }
    broken = false;
    expect(await store.getTask('y')).toBeUndefined();
    expect(await store.getTask('x')).toMatchObject({ seq: 0, leaseOwner: null });
  });

  it('onListenerError: an append whose listener throws still settles, and the other listeners hear it', async () => {
    const schema = await migrated();
    const store = await open({
      schema,
      onListenerError: () => {
        throw new Error('the logger is down');
      },
    });
    store.changes.subscribe(() => {
      throw new Error('a faulty listener');
    });
    const recorder = new Recorder(store);
    await store.createTask({ id: 'x', owner: 'alice', kind: 'k' });
    const appended = store.append('x', { type: 'progress' });
    // A liveness bound, not a timing assertion: the append is committed in milliseconds, or never settles.
    expect(
      await settlesWithin(
        appended.then(
          () => undefined,
          () => undefined,
        ),
        5000,
      ),
    ).toBe('closed');
    await expect(appended).resolves.toMatchObject({ event: { seq: 1 } });
    expect(recorder.has('x', 1)).toBe(true);
  });
});
