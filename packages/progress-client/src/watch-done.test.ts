import type { TaskEvent, TaskView } from '@finishline/core';
import { ErrorCode, isProgressError } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { FakeTask } from './testing/fake-server.js';
import { setup } from './testing/harness.js';
import { flush } from './testing/manual-scheduler.js';

const ev = (event: TaskEvent) => ({ type: 'event' as const, event });
const snap = (task: TaskView) => ({ type: 'snapshot' as const, task });

function subscribed() {
  const ctx = setup();
  const watch = ctx.client.watch('t1');
  const socket = ctx.server.accept();
  const task = new FakeTask('t1', 2);
  socket.push(snap(task.view()));
  return { ...ctx, watch, socket, task };
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => 'resolved',
    (error: unknown) => error,
  );
}

describe('watch.done({ signal, timeoutMs })', () => {
  it('rejects with `timeout` after timeoutMs, and the watch goes on to the final state', async () => {
    const { client, scheduler, socket, task, watch } = subscribed();
    const bounded = rejection(watch.done({ timeoutMs: 5000 }));
    await scheduler.advance(4999);
    socket.push(ev(task.item('a')));
    await scheduler.advance(1);
    const error = await bounded;
    expect(isProgressError(error, ErrorCode.Timeout)).toBe(true);
    expect((error as Error).message).toBe('watch.done: task t1 did not finish within 5000 ms');
    socket.push(ev(task.item('b')));
    socket.push(ev(task.end()));
    expect((await watch.done).status).toBe('completed');
    await client.close();
  });

  it('resolves with the final state when the task ends first, and leaves no timer behind', async () => {
    const { client, scheduler, socket, task, watch } = subscribed();
    const before = scheduler.pending;
    const bounded = watch.done({ timeoutMs: 60_000 });
    expect(scheduler.pending).toBe(before + 1);
    socket.push(ev(task.item('a')));
    socket.push(ev(task.item('b')));
    socket.push(ev(task.end()));
    expect((await bounded).status).toBe('completed');
    await flush();
    expect(scheduler.delays).not.toContain(60_000);
    await client.close();
  });

  it('rejects with `closed` when the signal aborts, without closing the watch', async () => {
    const { client, watch } = subscribed();
    const controller = new AbortController();
    const bounded = rejection(watch.done({ signal: controller.signal }));
    controller.abort(new Error('user left'));
    const error = await bounded;
    expect(isProgressError(error, ErrorCode.Closed)).toBe(true);
    expect((error as Error).message).toBe('watch.done: the wait for task t1 was aborted');
    expect((error as Error).cause).toEqual(new Error('user left'));
    expect(watch.closed).toBe(false);
    const already = await rejection(watch.done({ signal: AbortSignal.abort() }));
    expect(isProgressError(already, ErrorCode.Closed)).toBe(true);
    await client.close();
  });

  it('names the string it got for timeoutMs (from a JavaScript caller), and takes Infinity as no limit', async () => {
    const { client, socket, task, watch } = subscribed();
    // Until 5 December 2026: "must be a number >= 0, got 5", which read as the number it asked for.
    expect(await rejection(watch.done({ timeoutMs: '5' as unknown as number }))).toMatchObject({
      code: ErrorCode.InvalidInput,
      message: 'watch.done: timeoutMs must be a number >= 0, got "5"',
    });
    // Adoption review, 7 December 2026: -1 was refused as "must be a finite number >= 0", though Infinity is taken.
    expect(await rejection(watch.done({ timeoutMs: -1 }))).toMatchObject({
      code: ErrorCode.InvalidInput,
      message: 'watch.done: timeoutMs must be a number >= 0, got -1',
    });
    expect(await rejection(watch.done({ timeoutMs: Number.NaN }))).toMatchObject({
      code: ErrorCode.InvalidInput,
    });
    const unbounded = watch.done({ timeoutMs: Number.POSITIVE_INFINITY });
    socket.push(ev(task.end()));
    expect((await unbounded).status).toBe('completed');
    await client.close();
  });

  it('starts no timer for timeoutMs: Infinity, as for no timeoutMs; a finite one above 2^31 - 1 ms waits in steps', async () => {
    const { client, scheduler, socket, task, watch } = subscribed();
    const before = scheduler.pending;
    // Until 7 December 2026 Infinity started a timer, re-armed every 2^31 - 1 ms while the wait lasted.
    const unbounded = watch.done({ timeoutMs: Number.POSITIVE_INFINITY });
    expect(scheduler.pending).toBe(before);
    // Not fired at once, as a host's setTimeout fires a delay above 2^31 - 1 ms: its first step is that long.
    const long = watch.done({ timeoutMs: 2 ** 40 });
    expect(scheduler.pending).toBe(before + 1);
    expect(Math.max(...scheduler.delays)).toBe(2 ** 31 - 1);
    socket.push(ev(task.end()));
    expect((await unbounded).status).toBe('completed');
    expect((await long).status).toBe('completed');
    await flush();
    expect(scheduler.delays).not.toContain(2 ** 31 - 1);
    await client.close();
    expect(scheduler.pending).toBe(0);
  });

  it('refuses options that are not an object, an unknown one, or a signal that is not an AbortSignal with invalid_input, and leaves no subscription behind', async () => {
    const { client, socket } = subscribed();
    // Until 6 December 2026 each threw a TypeError (the unknown key was ignored), after the subscription
    // to t2 went out.
    for (const [options, message] of [
      [null, 'watch: options must be an object, got null'],
      [5, 'watch: options must be an object, got 5'],
      [{ signal: new AbortController() }, 'watch: signal must be an AbortSignal, got an object'],
      [{ signal: null }, 'watch: signal must be an AbortSignal, got null'],
      [{ sigal: AbortSignal.abort() }, 'watch: unknown option "sigal" (did you mean `signal`?)'],
    ] as const) {
      expect(() => client.watch('t2', options as never)).toThrow(
        expect.objectContaining({ code: ErrorCode.InvalidInput, message }),
      );
    }
    expect(socket.frames('subscribe').map((frame) => frame.taskId)).toEqual(['t1']);
    const again = client.watch('t2', { signal: new AbortController().signal });
    expect(again.closed).toBe(false);
    await client.close();
  });

  it('refuses options that are not an object, an unknown one, or a signal that is not an AbortSignal with invalid_input, and the watch goes on', async () => {
    const { client, socket, task, watch } = subscribed();
    // Until 7 December 2026 a signal that is not an AbortSignal rejected with a TypeError, `null` was
    // taken as no signal, and an unknown option was ignored (`{ timeout }`: a wait with no bound at all).
    for (const [options, message] of [
      [null, 'watch.done: options must be an object, got null'],
      [{ signal: new AbortController() }, 'watch.done: signal must be an AbortSignal, got an object'],
      [{ signal: null }, 'watch.done: signal must be an AbortSignal, got null'],
      [{ timeout: 5000 }, 'watch.done: unknown option "timeout" (did you mean `timeoutMs`?)'],
    ] as const) {
      expect(await rejection(watch.done(options as never))).toMatchObject({
        code: ErrorCode.InvalidInput,
        message,
      });
    }
    const bounded = watch.done({ signal: new AbortController().signal, timeoutMs: undefined });
    socket.push(ev(task.end()));
    expect((await bounded).status).toBe('completed');
    await client.close();
  });

  it('still works as a plain promise, and refuses a bad timeoutMs', async () => {
    const { client, socket, task, watch } = subscribed();
    expect(await rejection(watch.done({ timeoutMs: -1 }))).toMatchObject({ code: ErrorCode.InvalidInput });
    socket.push(ev(task.item('a')));
    socket.push(ev(task.item('b')));
    socket.push(ev(task.end()));
    const [all] = await Promise.all([watch.done]);
    expect(all.status).toBe('completed');
    expect(await watch.done.then((state) => state.seq)).toBe(3);
    await client.close();
  });

  it('resolves with the final state when a `finished` listener closes the watch (event or snapshot)', async () => {
    const { client, socket, task, watch } = subscribed();
    watch.on('finished', () => watch.close());
    socket.push(ev(task.item('a')));
    socket.push(ev(task.item('b')));
    socket.push(ev(task.end()));
    expect(
      await watch.done.then(
        (state) => state.status,
        (error: unknown) => error,
      ),
    ).toBe('completed');

    const late = client.watch('t2');
    const other = new FakeTask('t2', 1);
    other.item('a');
    other.end();
    late.on('finished', () => late.close());
    socket.push(snap(other.view()));
    expect(
      await late.done.then(
        (state) => state.status,
        (error: unknown) => error,
      ),
    ).toBe('completed');
    await client.close();
  });
});
