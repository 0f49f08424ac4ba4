import { CloseCode, ErrorCode } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { fakePage } from './testing/fake-page.js';
import { FakeTask } from './testing/fake-server.js';
import { setup } from './testing/harness.js';

/** A client with page events, watching `t1` and `t2` on an open socket, both at seq 1. */
function watching(extra: Parameters<typeof setup>[0] = {}) {
  const page = fakePage();
  const ctx = setup({ pageEvents: page.sources, wakePingTimeoutMs: 2000, ...extra });
  const t1 = new FakeTask('t1', 5);
  const t2 = new FakeTask('t2', 5);
  const w1 = ctx.client.watch('t1');
  const w2 = ctx.client.watch('t2');
  const socket = ctx.server.accept(15_000);
  t1.item('a');
  t2.item('a');
  socket.push({ type: 'snapshot', task: t1.view() });
  socket.push({ type: 'snapshot', task: t2.view() });
  socket.sent.length = 0;
  return {
    ...ctx,
    page,
    socket,
    t1,
    t2,
    w1,
    w2,
  };
}

/** A client on a visible page whose listeners are kept in `listening`, by event type. */
function listenedTo() {
  const listening = new Set<string>();
  const target = () => ({
    addEventListener: (type: string) => listening.add(type),
    removeEventListener: (type: string) => listening.delete(type),
  });
  const ctx = setup({
    pageEvents: { document: { ...target(), visibilityState: 'visible' }, window: target() },
  });
  return { ...ctx, listening };
}

describe('page life', () => {
  it('on visible: pings and resyncs every watch at once; a silent socket is replaced at the deadline, without backoff', async () => {
    const { client, server, socket, page, scheduler } = watching();
    page.hide();
    expect(socket.sent).toEqual([]);
    page.show();
    expect(socket.frames('ping')).toHaveLength(1);
    expect(socket.frames('subscribe')).toEqual([
      { type: 'subscribe', taskId: 't1', afterSeq: 1 },
      { type: 'subscribe', taskId: 't2', afterSeq: 1 },
    ]);
    await scheduler.advance(1999);
    expect(server.sockets).toHaveLength(1);
    await scheduler.advance(1);
    // Replaced at 2 s, far before the 32 s heartbeat timeout, and at once rather than after a backoff.
    expect(socket.closedWith).toEqual([
      { code: CloseCode.HeartbeatTimeout, reason: 'no answer after visible' },
    ]);
    expect(server.sockets).toHaveLength(2);
    const fresh = server.accept();
    expect(fresh.frames('subscribe')).toEqual([
      { type: 'subscribe', taskId: 't1', afterSeq: 1 },
      { type: 'subscribe', taskId: 't2', afterSeq: 1 },
    ]);
    await client.close();
  });

  it('takes the events of one wake together (visible, pageshow, online, resume): one ping, one resync per watch, one replacement', async () => {
    // Each event pinged and resynced every watch again: two to four subscribes per watch for one wake.
    const { client, server, socket, page, scheduler } = watching();
    page.show();
    page.pageshow(true);
    page.online();
    page.resume();
    expect(socket.frames('ping')).toHaveLength(1);
    expect(socket.frames('subscribe')).toEqual([
      { type: 'subscribe', taskId: 't1', afterSeq: 1 },
      { type: 'subscribe', taskId: 't2', afterSeq: 1 },
    ]);
    await scheduler.advance(1000);
    page.online(); // still the same check: its ping is unanswered
    expect(socket.frames('ping')).toHaveLength(1);
    await scheduler.advance(1000);
    expect(socket.closedWith).toEqual([
      { code: CloseCode.HeartbeatTimeout, reason: 'no answer after visible' },
    ]);
    expect(server.sockets).toHaveLength(2);
    const fresh = server.accept();
    expect(fresh.frames('subscribe')).toHaveLength(2);
    fresh.sent.length = 0;
    // A wake once the check is over is a new one.
    page.show();
    expect(fresh.frames('ping')).toHaveLength(1);
    expect(fresh.frames('subscribe')).toHaveLength(2);
    await client.close();
  });

  it('takes a clock jump seen as the page shows for the same wake', async () => {
    let slept = 0;
    const page = fakePage();
    let now: () => number = () => 0;
    const ctx = setup({ pageEvents: page.sources, clockCheckIntervalMs: 2000, clock: () => now() + slept });
    now = ctx.scheduler.now;
    ctx.client.watch('t1');
    const socket = ctx.server.accept();
    socket.push({ type: 'snapshot', task: new FakeTask('t1', 5).view() });
    socket.sent.length = 0;
    slept = 60_000;
    await ctx.scheduler.advance(2000); // the clock check's tick, a minute late
    page.show();
    expect(socket.frames('ping')).toHaveLength(1);
    expect(socket.frames('subscribe')).toEqual([{ type: 'subscribe', taskId: 't1', afterSeq: 0 }]);
    // Answered: the next wake checks again.
    socket.push({ type: 'pong', time: 1 });
    page.online();
    expect(socket.frames('ping')).toHaveLength(2);
    await ctx.client.close();
  });

  it('resubscribes a watch waiting out a refused subscribe’s backoff once per wake, and its backoff goes on growing', async () => {
    // Kept on purpose (docs/client.md, "Sleep"): after a real sleep the refusal may be long over, and what
    // the watch missed meanwhile should show at once. One subscribe per wake (not one per event of it),
    // and a refusal of it waits the next, longer step: a refusing server is not asked more than that.
    const { client, socket, page, scheduler, t2 } = watching();
    socket.push({ type: 'error', code: ErrorCode.RateLimited, message: 'slow down', taskId: 't1' });
    await scheduler.advance(100); // its retry is due at 500 ms (a half of 1 s, random 0.5)
    page.show();
    page.pageshow(true);
    page.online();
    expect(socket.frames('subscribe')).toEqual([
      { type: 'subscribe', taskId: 't1', afterSeq: 1 },
      { type: 'subscribe', taskId: 't2', afterSeq: 1 },
    ]);
    socket.push({ type: 'pong', time: 1 });
    socket.push({ type: 'snapshot', task: t2.view() });
    socket.sent.length = 0;
    socket.push({ type: 'error', code: ErrorCode.RateLimited, message: 'slow down', taskId: 't1' });
    await scheduler.advance(999); // the next step: a half of 2 s, and the earlier retry went with the wake
    expect(socket.frames('subscribe')).toEqual([]);
    await scheduler.advance(1);
    expect(socket.frames('subscribe')).toEqual([{ type: 'subscribe', taskId: 't1', afterSeq: 1 }]);
    await client.close();
  });

  it('keeps a socket that answers, and delivers what the resync brings', async () => {
    const { client, server, socket, page, scheduler, t1, w1 } = watching();
    t1.item('b');
    t1.item('c');
    page.show();
    socket.push({ type: 'pong', time: 1 });
    socket.push({ type: 'event', event: t1.events[1] as never });
    socket.push({ type: 'event', event: t1.events[2] as never });
    expect(w1.getSnapshot().seq).toBe(3);
    await scheduler.advance(10_000);
    expect(socket.closedWith).toEqual([]);
    expect(server.sockets).toHaveLength(1);
    await client.close();
  });

  it('on online: a reconnect waiting out its backoff goes at once', async () => {
    const { client, server, socket, page, scheduler, states } = watching({ random: () => 0.99 });
    socket.serverClose(1006);
    expect(states.at(-1)).toMatchObject({ state: 'reconnecting' });
    expect(server.sockets).toHaveLength(1);
    page.online();
    expect(server.sockets).toHaveLength(2);
    server.accept();
    expect(client.state).toBe('open');
    await scheduler.advance(0);
    await client.close();
  });

  it('pageshow counts only from the back/forward cache; resume counts', async () => {
    const { client, socket, page } = watching();
    page.pageshow(false);
    expect(socket.frames('ping')).toHaveLength(0);
    page.pageshow(true);
    expect(socket.frames('ping')).toHaveLength(1);
    socket.push({ type: 'pong', time: 1 }); // answered: the next event is another wake
    page.resume();
    expect(socket.frames('ping')).toHaveLength(2);
    await client.close();
  });

  it('a clock jump (timer firing far later than due) checks the connection', async () => {
    let offsetMs = 0;
    let now: () => number = () => 0;
    const page = fakePage();
    // The scheduler's clock plus an offset: time that passed while the process did not run.
    const ctx = setup({
      pageEvents: page.sources,
      clockCheckIntervalMs: 2000,
      clockJumpMs: 5000,
      clock: () => now() + offsetMs,
    });
    now = ctx.scheduler.now;
    const client = ctx.client;
    client.watch('t1');
    const socket = ctx.server.accept();
    // Answered, as a server answers every subscribe (an unanswered one is sent again after behindGraceMs).
    socket.push({ type: 'snapshot', task: new FakeTask('t1', 5).view() });
    socket.sent.length = 0;
    await ctx.scheduler.advance(10_000); // ticks on time: nothing
    expect(socket.frames('ping')).toHaveLength(0);
    offsetMs = 4000; // late, but under the threshold
    await ctx.scheduler.advance(2000);
    expect(socket.frames('ping')).toHaveLength(0);
    offsetMs += 60_000; // asleep for a minute
    await ctx.scheduler.advance(2000);
    expect(socket.frames('ping')).toHaveLength(1);
    expect(socket.frames('subscribe')).toEqual([{ type: 'subscribe', taskId: 't1', afterSeq: 0 }]);
    await client.close();
  });

  it('listens only while something is watched, and not at all with pageEvents: false', async () => {
    const page = fakePage();
    const added: string[] = [];
    const removed: string[] = [];
    const spy = (target: EventTarget) => ({
      addEventListener: (type: string, fn: never) => {
        added.push(type);
        target.addEventListener(type, fn);
      },
      removeEventListener: (type: string, fn: never) => {
        removed.push(type);
        target.removeEventListener(type, fn);
      },
    });
    const sources = {
      document: Object.assign(spy(page.sources.document), {
        get visibilityState() {
          return page.sources.document.visibilityState;
        },
      }),
      window: spy(page.sources.window),
    };
    const { client, server } = setup({ pageEvents: sources });
    expect(added).toEqual([]);
    const watch = client.watch('t1');
    expect(added.sort()).toEqual(['online', 'pageshow', 'resume', 'visibilitychange']);
    server.accept();
    watch.close();
    await client.close();
    expect(removed.sort()).toEqual(['online', 'pageshow', 'resume', 'visibilitychange']);

    const off = setup({ pageEvents: false });
    off.client.watch('t1');
    const socket = off.server.accept();
    socket.sent.length = 0;
    page.show();
    expect(socket.sent).toEqual([]);
    await off.client.close();
  });

  it('removes its listeners and clock check once no watch is unfinished, though the socket stays open', async () => {
    const { client, server, scheduler, listening } = listenedTo();
    const watch = client.watch('t1');
    expect(listening.size).toBe(4);
    const socket = server.accept(15_000);
    const task = new FakeTask('t1', 1);
    task.item('a');
    task.end();
    socket.push({ type: 'snapshot', task: task.view() });
    await watch.done;
    expect([...listening]).toEqual([]);
    watch.close();
    await scheduler.advance(10_000);
    // Left: the open socket's heartbeat watchdog only (no clock check every 2 s).
    expect(scheduler.delays).toHaveLength(1);
    expect([...listening]).toEqual([]);
    // A new watch brings page life back.
    client.watch('t2');
    expect(listening.size).toBe(4);
    await client.close();
  });

  it('removes them too when the last unfinished watch is closed from its own finished listener', async () => {
    // The common `watch.on('finished', () => watch.close())` (or a component unmounted on the end): the
    // task finished and left within one frame, and neither step looked whether page life could stop, so its
    // listeners and its clock check (every 2 s) stayed while the socket was open.
    const { client, server, scheduler, listening } = listenedTo();
    const watch = client.watch('t1');
    watch.on('finished', () => watch.close());
    const socket = server.accept(15_000);
    const task = new FakeTask('t1', 1);
    task.item('a');
    socket.push({ type: 'snapshot', task: task.view() });
    socket.push({ type: 'event', event: task.end() });
    await watch.done;
    expect(watch.closed).toBe(true);
    expect([...listening]).toEqual([]);
    await scheduler.advance(10_000);
    // Left: the open socket's heartbeat watchdog only (no clock check every 2 s).
    expect(scheduler.delays).toHaveLength(1);
    await client.close();
  });
});
