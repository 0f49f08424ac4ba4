import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { TaskEvent } from '@finishline/core';
import { MemoryProgressStore, PROTOCOL_NAME_V1, PROTOCOL_VERSION } from '@finishline/core';
import { ProgressServer } from '@finishline/server';
import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { WebSocket } from 'ws';
import { cursorKey, MemoryCursorStorage } from './persist.js';
import { ProgressClient } from './progress-client.js';
import { type BroadcastChannelLike, type LockManagerLike, tabSharing } from './tab-sharing.js';
import { FakeServer, type FakeSocket, FakeTask } from './testing/fake-server.js';
import { record } from './testing/harness.js';
import type { WebSocketConstructorLike } from './transport-types.js';
import type { Watch } from './watch.js';

/**
 * Tabs in one process: a channel bus and a lock manager that behave like a browser's (messages reach
 * the other tabs asynchronously; a lock passes to the next waiter when its tab dies or its callback's
 * promise settles; an aborted request leaves the queue; a closed channel neither hears nor may speak),
 * and a tab can be killed: it stops hearing and speaking, and its locks are released.
 */
class Browser {
  readonly #channels = new Map<string, Set<{ tab: Tab; channel: BroadcastChannelLike }>>();
  readonly #locks = new Map<string, { holder: Tab | undefined; queue: { tab: Tab; grant: () => void }[] }>();

  tab(): Tab {
    return new Tab(this);
  }

  channel(tab: Tab, name: string): BroadcastChannelLike {
    const members = this.#channels.get(name) ?? new Set();
    this.#channels.set(name, members);
    const entry = { tab, channel: undefined as unknown as BroadcastChannelLike };
    const channel: BroadcastChannelLike = {
      onmessage: null,
      postMessage: (message) => {
        if (!members.has(entry)) throw new Error('InvalidStateError: the channel is closed');
        if (tab.dead) return;
        const copy = structuredClone(message);
        for (const other of members) {
          if (other.channel === channel) continue;
          setTimeout(() => {
            if (!other.tab.dead && members.has(other)) other.channel.onmessage?.({ data: copy });
          }, 0);
        }
      },
      close: () => {
        members.delete(entry);
      },
    };
    entry.channel = channel;
    members.add(entry);
    return channel;
  }

  /** The channels `tab` has open. */
  channelsOf(tab: Tab): number {
    let count = 0;
    for (const members of this.#channels.values())
      for (const entry of members) if (entry.tab === tab) count++;
    return count;
  }

  /** The locks `tab` holds or waits for. */
  locksOf(tab: Tab): string[] {
    const names: string[] = [];
    for (const [name, lock] of this.#locks) {
      if (lock.holder === tab) names.push(`held ${name}`);
      for (const entry of lock.queue) if (entry.tab === tab) names.push(`waits ${name}`);
    }
    return names;
  }

  /** Who holds the lock `name`. */
  holder(name: string): Tab | undefined {
    return this.#locks.get(name)?.holder;
  }

  request(tab: Tab, name: string, signal: AbortSignal, callback: () => Promise<unknown>): Promise<unknown> {
    const lock = this.#locks.get(name) ?? { holder: undefined, queue: [] };
    this.#locks.set(name, lock);
    return new Promise((resolve, reject) => {
      const entry = {
        tab,
        grant: () => {
          if (lock.holder !== tab) return; // its tab died while the grant was on its way
          void callback().then((value) => {
            lock.holder = undefined;
            this.#next(lock);
            resolve(value);
          });
        },
      };
      lock.queue.push(entry);
      signal.addEventListener('abort', () => {
        if (!lock.queue.includes(entry)) return; // granted: a signal no longer matters
        lock.queue = lock.queue.filter((other) => other !== entry);
        reject(signal.reason);
      });
      this.#next(lock);
    });
  }

  kill(tab: Tab): void {
    tab.dead = true;
    for (const lock of this.#locks.values()) {
      lock.queue = lock.queue.filter((entry) => entry.tab !== tab);
      if (lock.holder === tab) {
        lock.holder = undefined;
        this.#next(lock);
      }
    }
  }

  #next(lock: { holder: Tab | undefined; queue: { tab: Tab; grant: () => void }[] }): void {
    if (lock.holder !== undefined) return;
    const entry = lock.queue.shift();
    if (entry === undefined) return;
    lock.holder = entry.tab;
    setTimeout(entry.grant, 0);
  }
}

class Tab {
  dead = false;
  readonly locks: LockManagerLike;
  readonly channel: (name: string) => BroadcastChannelLike;

  constructor(browser: Browser) {
    // Both forms of the real `request`, (name, callback) and (name, options, callback).
    const request = (name: string, ...args: unknown[]) => {
      const [options, callback] = (args.length === 1 ? [{}, args[0]] : args) as [
        { signal?: AbortSignal },
        () => Promise<unknown>,
      ];
      return browser.request(this, name, options.signal ?? new AbortController().signal, callback);
    };
    this.locks = { request };
    this.channel = (name) => browser.channel(this, name);
  }
}

const noop = (): void => undefined;

const hello = {
  type: 'hello',
  protocol: PROTOCOL_VERSION,
  serverId: 's1',
  heartbeatIntervalMs: 15_000,
} as const;

/** Opens the newest real socket and says hello once the leader authenticated it. */
async function acceptReal(server: FakeServer, count: number): Promise<FakeSocket> {
  await vi.waitFor(() => expect(server.sockets).toHaveLength(count));
  const socket = server.last;
  socket.open();
  await vi.waitFor(() => expect(socket.frames('auth')).toHaveLength(1));
  socket.push(hello);
  return socket;
}

function clientIn(
  tab: Tab,
  server: { WebSocket: WebSocketConstructorLike },
  extra: Record<string, unknown> = {},
) {
  return new ProgressClient({
    url: 'ws://example.test/progress',
    WebSocket: server.WebSocket,
    token: 'tok',
    random: () => 0,
    pageEvents: false,
    shareAcrossTabs: tabSharing({ channel: tab.channel, locks: tab.locks }),
    ...extra,
  });
}

/**
 * Two tabs of one browser, each with a client acking at once; the first (the leader) watches `t1`, so the
 * real socket is open and stays open while the tests' watches of other tasks come and go.
 */
async function twoTabsOnOneSocket() {
  const browser = new Browser();
  const server = new FakeServer();
  const [early, late] = [browser.tab(), browser.tab()].map((tab) =>
    clientIn(tab, server, { ackDelayMs: 0 }),
  ) as [ProgressClient, ProgressClient];
  const keep = early.watch('t1');
  const real = await acceptReal(server, 1);
  await vi.waitFor(() => expect(early.state).toBe('open'));
  return { early, late, keep, real };
}

/** A real server on a memory store, its principals those `authenticateToken` names, closed at the test's end. */
async function realServer(authenticateToken: (token: string) => { id: string } | null) {
  const store = new MemoryProgressStore();
  const server = await ProgressServer.listen(
    { store, authenticateToken, heartbeatIntervalMs: 60_000 },
    { port: 0, host: '127.0.0.1' },
  );
  onTestFinished(() => server.close({ timeoutMs: 1000 }));
  const { port } = (server.httpServer as Server).address() as AddressInfo;
  return { store, server, url: `ws://127.0.0.1:${port}/progress` };
}

/** Token `tok` is alice's, `bob` bob's. */
const aliceOrBob = (token: string) => ({ tok: { id: 'alice' }, bob: { id: 'bob' } })[token] ?? null;

/**
 * A real server (a fake one answers whatever the test pushes: only a real one merges the subscribes it is
 * still loading) whose task reads wait while `hold()` holds them, and a leader tab watching `keep` (the
 * real socket open). `sent(taskId)` counts the subscribes of a task the real socket sent; `settled()`
 * resolves once the server has handled everything sent so far (the server answers a socket's frames in
 * order: a ping's pong comes after them).
 */
async function tabsOnARealServer() {
  const { store, server, url } = await realServer((token) => (token === 'tok' ? { id: 'alice' } : null));
  const sent: string[] = [];
  let real: WebSocket | undefined;
  const RealWebSocket = function (this: unknown, address: string, protocols?: string | string[]) {
    const socket = new WebSocket(address, protocols);
    const send = socket.send.bind(socket) as (data: string) => void;
    socket.send = ((data: string) => {
      sent.push(data);
      send(data);
    }) as typeof socket.send;
    real = socket;
    return socket;
  } as unknown as WebSocketConstructorLike;
  const browser = new Browser();
  // No answer wait (a subscribe is never repeated): only the server's answers bring what a tab waits for.
  const clientOf = (tab: Tab) => clientIn(tab, { WebSocket: RealWebSocket }, { url, behindGraceMs: 0 });
  const leader = clientOf(browser.tab());
  onTestFinished(() => leader.close());
  const keep = await server.tasks.create({ owner: 'alice', kind: 'k' });
  const kept = leader.watch(keep.id);
  await vi.waitFor(() => expect(kept.getSnapshot().status).toBe('running'));
  const getTask = store.getTask.bind(store);
  let held: Promise<void> | undefined;
  const reads = vi.spyOn(store, 'getTask').mockImplementation(async (id) => {
    await held;
    return getTask(id);
  });
  return {
    server,
    reads,
    /** A follower tab's client, open. */
    async follower(): Promise<ProgressClient> {
      const client = clientOf(browser.tab());
      onTestFinished(() => client.close());
      client.watch(keep.id);
      await vi.waitFor(() => expect(client.state).toBe('open'));
      return client;
    },
    /** Holds the server's task reads until the returned function is called. */
    hold(): () => void {
      let release: () => void = noop;
      held = new Promise<void>((resolve) => {
        release = resolve;
      });
      return release;
    },
    sent: (taskId: string) =>
      sent.filter((data) => data.includes('"subscribe"') && data.includes(`"${taskId}"`)).length,
    settled: () =>
      new Promise<void>((resolve) => {
        const socket = real as WebSocket;
        const onMessage = (data: unknown) => {
          if (!String(data).includes('"requestId":"settled"')) return;
          socket.off('message', onMessage);
          resolve();
        };
        socket.on('message', onMessage);
        socket.send(JSON.stringify({ type: 'ping', id: 'settled' }));
      }),
  };
}

/**
 * Runs `run`, collecting what reaches `uncaughtException` meanwhile (a throw out of a channel or socket
 * handler), and returns it.
 */
async function uncaughtDuring(run: () => Promise<void>): Promise<unknown[]> {
  const errors: unknown[] = [];
  const onError = (error: unknown) => errors.push(error);
  process.on('uncaughtException', onError);
  try {
    await run();
  } finally {
    process.off('uncaughtException', onError);
  }
  return errors;
}

/** A leader tab's client with its real socket open, and a wrapped socket of a second tab, open too. */
async function leaderAndWrappedSocket(browser: Browser, server: FakeServer) {
  const leader = clientIn(browser.tab(), server);
  leader.watch('t1');
  const real = await acceptReal(server, 1);
  await vi.waitFor(() => expect(leader.state).toBe('open'));
  const tab = browser.tab();
  const Shared = tabSharing({ channel: tab.channel, locks: tab.locks }).wrap(server.WebSocket);
  const socket = new Shared('ws://example.test/progress');
  return { leader, real, socket };
}

/** Makes `socket.close()` refuse a reason past 123 bytes of UTF-8, as a browser's WebSocket does. */
function closeLikeABrowser(socket: FakeSocket): void {
  const close = socket.close.bind(socket);
  socket.close = (code, reason) => {
    if (new TextEncoder().encode(reason ?? '').length > 123)
      throw new DOMException('The close reason must not be greater than 123 UTF-8 bytes.', 'SyntaxError');
    close(code, reason);
  };
}

/** Watches the channel of the URL from a tab of its own: the ids of the sockets that asked to connect. */
function spy(browser: Browser): { channel: BroadcastChannelLike; connects: { from: string; id: string }[] } {
  const channel = browser.channel(browser.tab(), 'finishline:ws://example.test/progress');
  const connects: { from: string; id: string }[] = [];
  channel.onmessage = ({ data }) => {
    const message = data as { t: string; from: string; id: string };
    if (message.t === 'connect') connects.push({ from: message.from, id: message.id });
  };
  return { channel, connects };
}

describe('tab sharing', () => {
  it('one real socket for every tab; each tab gets every event once; a dead leader is replaced without loss', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const tabs = Array.from({ length: 4 }, () => browser.tab());
    const clients = tabs.map(
      (tab) =>
        new ProgressClient({
          url: 'ws://example.test/progress',
          WebSocket: server.WebSocket,
          token: 'tok',
          random: () => 0,
          ackDelayMs: 0,
          pageEvents: false,
          shareAcrossTabs: tabSharing({ channel: tab.channel, locks: tab.locks }),
        }),
    );
    const watches = clients.map((client) => client.watch('t1'));
    const logs = watches.map(record);
    const first = await acceptReal(server, 1);
    await vi.waitFor(() => expect(first.frames('subscribe')).toHaveLength(4));
    expect(first.frames('auth')).toEqual([{ type: 'auth', token: 'tok', protocol: PROTOCOL_VERSION }]);
    const task = new FakeTask('t1', 4);
    first.push({ type: 'snapshot', task: task.view() });
    first.push({ type: 'event', event: task.item('a') });
    first.push({ type: 'event', event: task.item('b') });
    await vi.waitFor(() => {
      for (const watch of watches) expect(watch.getSnapshot().seq).toBe(2);
    });
    expect(server.sockets).toHaveLength(1);
    // Four tabs acked seq 2 (or 1 and 2): the server heard each seq at most once.
    await vi.waitFor(() => expect(first.frames('ack').at(-1)?.seq).toBe(2));
    await new Promise((resolve) => setTimeout(resolve, 50));
    const acks = first.frames('ack').map((ack) => ack.seq);
    expect(new Set(acks).size).toBe(acks.length);

    // The leader tab dies (its socket with it): the first hub asked for the lock first and got it. An
    // event is sent into the void meanwhile.
    browser.kill(tabs[0] as Tab);
    first.onmessage = null;
    first.onclose = null;
    first.serverClose(1006);
    task.item('c');

    const second = await acceptReal(server, 2);
    await vi.waitFor(() => expect(second.frames('subscribe')).toHaveLength(3));
    expect(second.frames('subscribe').every((frame) => frame.afterSeq === 2)).toBe(true);
    // The resync replays what the survivors missed, three times (once per subscribe): each tab takes it once.
    for (let i = 0; i < 3; i++) second.push({ type: 'event', event: task.events[2] as TaskEvent });
    second.push({ type: 'event', event: task.item('d') });
    second.push({ type: 'event', event: task.end('completed') });
    const survivors = watches.slice(1);
    await Promise.all(survivors.map((watch) => watch.done));
    for (const log of logs.slice(1)) {
      expect(log).toEqual([
        'snapshot@0',
        'item@1',
        'item@2',
        'item@3',
        'item@4',
        'completed@5',
        'finished@5',
      ]);
    }
    expect(server.sockets).toHaveLength(2);
    await Promise.all(clients.slice(1).map((client) => client.close()));
    // The leader tab's client closed first, with two tabs still watching: it closed the real socket as it left.
    await vi.waitFor(() => expect(second.closedWith).toEqual([{ code: 1000, reason: 'leader tab left' }]));
  });

  it('a leader tab whose client closes (the page stays open) hands the socket to another tab, nothing lost or twice, and keeps no lock or channel', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const [leaderTab, followerTab] = [browser.tab(), browser.tab()] as [Tab, Tab];
    const leader = clientIn(leaderTab, server, { ackDelayMs: 0 });
    const follower = clientIn(followerTab, server, { ackDelayMs: 0 });
    leader.watch('t1');
    const watch = follower.watch('t1');
    const log = record(watch);
    const first = await acceptReal(server, 1);
    await vi.waitFor(() => expect(first.frames('subscribe')).toHaveLength(2));
    const task = new FakeTask('t1', 3);
    first.push({ type: 'snapshot', task: task.view() });
    first.push({ type: 'event', event: task.item('a') });
    await vi.waitFor(() => expect(watch.getSnapshot().seq).toBe(1));
    expect(browser.holder('finishline:leader:ws://example.test/progress')).toBe(leaderTab);

    await leader.close();
    // The tab left: the real socket closed, the lock went to the follower's tab, which opens a new one.
    expect(first.closedWith).toEqual([{ code: 1000, reason: 'leader tab left' }]);
    task.item('b'); // into the void, between the two sockets
    const second = await acceptReal(server, 2);
    await vi.waitFor(() =>
      expect(second.frames('subscribe')).toEqual([expect.objectContaining({ afterSeq: 1 })]),
    );
    second.push({ type: 'event', event: task.events[1] as TaskEvent });
    second.push({ type: 'event', event: task.end('completed') });
    await watch.done;
    expect(log).toEqual(['snapshot@0', 'item@1', 'item@2', 'completed@3', 'finished@3']);
    expect(browser.holder('finishline:leader:ws://example.test/progress')).toBe(followerTab);
    expect(browser.locksOf(leaderTab)).toEqual([]);
    expect(browser.channelsOf(leaderTab)).toBe(0);
    expect(server.sockets).toHaveLength(2);
    await follower.close();
    expect(second.closedWith).toEqual([{ code: 1000, reason: 'no tab watching' }]);
    expect(browser.locksOf(followerTab)).toEqual([]);
  });

  it("a follower's terminal ack posted to a leader tab that died, before the tab noticed, reaches the server through the next leader", async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const [leaderTab, followerTab] = [browser.tab(), browser.tab()] as [Tab, Tab];
    const leader = clientIn(leaderTab, server, { ackDelayMs: 0 });
    const follower = clientIn(followerTab, server, { ackDelayMs: 0 });
    onTestFinished(() => follower.close());
    leader.watch('t1');
    const watch = follower.watch('t2');
    const first = await acceptReal(server, 1);
    await vi.waitFor(() => expect(first.frames('subscribe')).toHaveLength(2));
    const task = new FakeTask('t2', 1);
    first.push({ type: 'snapshot', task: task.view() });
    await vi.waitFor(() => expect(watch.getSnapshot().progress).not.toBeNull());
    // The terminal event is relayed, then the leader's tab dies (its socket with it) before the follower's
    // ack comes: the follower posts it to a tab that is gone, and learns of that only from the lock after.
    first.push({ type: 'event', event: task.end('completed') });
    browser.kill(leaderTab);
    first.onmessage = null;
    first.onclose = null;
    first.serverClose(1006);
    await watch.done;
    // Until 6 December 2026 the ack was lost, and with the task done nothing took the follower to a socket
    // again: the task's end was never acknowledged to the server.
    const second = await acceptReal(server, 2);
    await vi.waitFor(() =>
      expect(second.frames('subscribe')).toEqual([expect.objectContaining({ taskId: 't2', afterSeq: 1 })]),
    );
    second.push({ type: 'snapshot', task: task.view(), reset: true });
    await vi.waitFor(() => expect(second.frames('ack')).toEqual([{ type: 'ack', taskId: 't2', seq: 1 }]));
    expect(first.frames('ack')).toEqual([]);
    await vi.waitFor(() => expect(second.frames('unsubscribe')).toHaveLength(1));
  });

  it('a follower tab whose client closes stops waiting for the lead, releases its own lock and closes its channel', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const [leaderTab, followerTab] = [browser.tab(), browser.tab()] as [Tab, Tab];
    const leader = clientIn(leaderTab, server);
    const follower = clientIn(followerTab, server);
    leader.watch('t1');
    follower.watch('t2');
    const real = await acceptReal(server, 1);
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(2));
    // Its tab lock, its place in the leader queue, and the watch on the leader's tab lock.
    expect(browser.locksOf(followerTab)).toHaveLength(3);

    await follower.close();
    expect(browser.locksOf(followerTab)).toEqual([]);
    expect(browser.channelsOf(followerTab)).toBe(0);
    // Its bye reached the leader, which unsubscribed what only that tab watched.
    await vi.waitFor(() =>
      expect(real.frames('unsubscribe')).toEqual([{ type: 'unsubscribe', taskId: 't2' }]),
    );
    await leader.close();
  });

  it("a tab whose page removed the client's listeners before closing it still leaves the sharing", async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const tab = browser.tab();
    const client = clientIn(tab, server);
    client.watch('t1');
    const real = await acceptReal(server, 1);
    await vi.waitFor(() => expect(client.state).toBe('open'));
    // A common teardown: the page unhooks its listeners, then closes the client.
    client.removeAllListeners();
    await client.close();
    expect(browser.locksOf(tab)).toEqual([]);
    expect(browser.channelsOf(tab)).toBe(0);
    expect(real.closedWith).toEqual([{ code: 1000, reason: 'no tab watching' }]);
  });

  it('a tab stays in the sharing while another of its clients on the URL is open', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const tab = browser.tab();
    const sharing = tabSharing({ channel: tab.channel, locks: tab.locks });
    const [one, two] = [0, 1].map(() => clientIn(tab, server, { shareAcrossTabs: sharing })) as [
      ProgressClient,
      ProgressClient,
    ];
    one.watch('t1');
    const watch = two.watch('t1');
    const real = await acceptReal(server, 1);
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(2));
    await one.close();
    const task = new FakeTask('t1', 1);
    real.push({ type: 'snapshot', task: task.view() });
    real.push({ type: 'event', event: task.end('completed') });
    await watch.done;
    expect(real.closedWith).toEqual([]);
    expect(browser.channelsOf(tab)).toBe(1);
    await two.close();
    expect(browser.locksOf(tab)).toEqual([]);
    expect(browser.channelsOf(tab)).toBe(0);
  });

  it("a late open or close from a former leader does not take over or close a tab's socket", async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const [leader, follower] = [browser.tab(), browser.tab()].map((tab) => clientIn(tab, server)) as [
      ProgressClient,
      ProgressClient,
    ];
    const states: string[] = [];
    follower.on('state', (change) => states.push(change.state));
    // A tab that led before, whose messages arrive late, replays what it said to the follower.
    const former = browser.channel(browser.tab(), 'finishline:ws://example.test/progress');
    let current: string | undefined;
    let followerSocket: string | undefined;
    former.onmessage = ({ data }) => {
      const message = data as { t: string; from: string; id?: string };
      if (message.t === 'leader') current = message.from;
      else if (message.t === 'connect' && message.from !== current) followerSocket = message.id;
    };
    leader.watch('t1');
    follower.watch('t1');
    await vi.waitFor(() => expect(followerSocket).toBeDefined());
    former.postMessage({ t: 'open', from: 'former', id: followerSocket, protocol: '' });
    await new Promise((resolve) => setTimeout(resolve, 20));
    const real = await acceptReal(server, 1);
    // The follower's socket opened through the leader, so its subscribe reached the server.
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(2));
    await vi.waitFor(() => expect(follower.state).toBe('open'));

    former.postMessage({ t: 'close', from: 'former', code: 1001, reason: 'late', ids: [followerSocket] });
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(states).not.toContain('reconnecting');
    expect(real.frames('subscribe')).toHaveLength(2);
    await Promise.all([leader, follower].map((client) => client.close()));
  });

  it('a tab that believed a late leader message from a tab that is gone takes the opens of the tab that leads', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const leader = clientIn(browser.tab(), server);
    const follower = clientIn(browser.tab(), server, { connectTimeoutMs: 1000 });
    leader.watch('t1');
    follower.watch('t2');
    const real = await acceptReal(server, 1);
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(2));
    // A tab that led for a moment and is gone (its lock free): its announcement arrives late.
    const former = browser.channel(browser.tab(), 'finishline:ws://example.test/progress');
    former.postMessage({ t: 'leader', from: 'gone' });
    // The follower's socket closes (the leader changed, it believes) and reconnects through the tab that
    // leads; before, it refused that tab's `open` for good, and each connect timeout (4010) made the
    // leader replace the real socket of every tab.
    await vi.waitFor(
      () => expect(real.frames('subscribe').filter((frame) => frame.taskId === 't2')).toHaveLength(2),
      { timeout: 2500 },
    );
    await vi.waitFor(() => expect(follower.state).toBe('open'));
    await new Promise((resolve) => setTimeout(resolve, 1200));
    expect(follower.state).toBe('open');
    expect(real.closedWith).toEqual([]);
    expect(server.sockets).toHaveLength(1);
    await Promise.all([leader, follower].map((client) => client.close()));
  });

  it('a bye about a socket the leader does not serve leaves the real socket open', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const client = clientIn(browser.tab(), server);
    client.watch('t1');
    const real = await acceptReal(server, 1);
    await vi.waitFor(() => expect(client.state).toBe('open'));
    // A tab whose socket went through a former leader gives up on it (silent: 4010) after the handover.
    const late = browser.channel(browser.tab(), 'finishline:ws://example.test/progress');
    late.postMessage({ t: 'bye', from: 'late', id: 'late/0', code: 4010, reason: 'heartbeat timeout' });
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(real.closedWith).toEqual([]);
    expect(client.state).toBe('open');
    await client.close();
  });

  it('two clients of one tab on one URL: one whose listener throws does not keep frames from the other', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const tab = browser.tab();
    const sharing = tabSharing({ channel: tab.channel, locks: tab.locks });
    const [faulty, other] = [0, 1].map(() => clientIn(tab, server, { shareAcrossTabs: sharing })) as [
      ProgressClient,
      ProgressClient,
    ];
    faulty.on('state', (change) => {
      if (change.state === 'open') throw new Error('a bug of the page');
    });
    const errors = await uncaughtDuring(async () => {
      faulty.watch('t1');
      other.watch('t2');
      const real = await acceptReal(server, 1);
      // With a socket each, only the faulty client would miss its hello; sharing one, so did the other.
      await vi.waitFor(() => expect(other.state).toBe('open'));
      await vi.waitFor(() =>
        expect(real.frames('subscribe')).toContainEqual(expect.objectContaining({ taskId: 't2' })),
      );
    });
    expect(errors).toEqual([new Error('a bug of the page')]);
    await Promise.all([faulty, other].map((client) => client.close()));
  });

  it('a tab that finds the socket silent has the leader replace the real socket', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const clients = [browser.tab(), browser.tab()].map(
      (tab, index) =>
        new ProgressClient({
          url: 'ws://example.test/progress',
          WebSocket: server.WebSocket,
          token: 'tok',
          random: () => 0,
          pageEvents: false,
          // Only the follower's client has a short timeout: it is the one that notices.
          heartbeatTimeoutMs: index === 1 ? 300 : 60_000,
          shareAcrossTabs: tabSharing({ channel: tab.channel, locks: tab.locks }),
        }),
    );
    for (const client of clients) client.watch('t1');
    const first = await acceptReal(server, 1);
    const second = await acceptReal(server, 2);
    expect(first.closedWith).toEqual([{ code: 4010, reason: 'heartbeat timeout' }]);
    await vi.waitFor(() => expect(second.frames('subscribe')).toHaveLength(2));
    await Promise.all(clients.map((client) => client.close()));
  });

  it('a follower behind a frozen leader (its tab stopped running, its lock still held) connects on a socket of its own', async () => {
    const browser = new Browser();
    // One server per tab, to tell the leader's real socket from the follower's own.
    const [leaderServer, followerServer] = [new FakeServer(), new FakeServer()];
    const leaderTab = browser.tab();
    const leader = clientIn(leaderTab, leaderServer);
    leader.watch('t1');
    const real = await acceptReal(leaderServer, 1);
    await vi.waitFor(() => expect(leader.state).toBe('open'));
    const follower = clientIn(browser.tab(), followerServer, {
      heartbeatTimeoutMs: 300,
      connectTimeoutMs: 300,
    });
    const watch = follower.watch('t1');
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(2));
    // Frozen (Page Lifecycle): the tab neither hears nor speaks, and the browser keeps its locks held.
    leaderTab.dead = true;
    // A heartbeat timeout, then a connect timeout: both 4010, with no word from a leader between them.
    await vi.waitFor(() => expect(followerServer.sockets).toHaveLength(1), { timeout: 5000 });
    const own = await acceptReal(followerServer, 1);
    await vi.waitFor(() => expect(own.frames('subscribe')).toHaveLength(1));
    own.push({ type: 'snapshot', task: new FakeTask('t1', 1).view() });
    await vi.waitFor(() => expect(watch.getSnapshot().status).toBe('running'));
    await Promise.all([leader.close(), follower.close()]);
  });

  it('a follower that went to a socket of its own behind a frozen leader comes back to the shared socket once the leader runs again', async () => {
    const browser = new Browser();
    const [leaderServer, followerServer] = [new FakeServer(), new FakeServer()];
    const leaderTab = browser.tab();
    const leader = clientIn(leaderTab, leaderServer);
    leader.watch('t1');
    const real = await acceptReal(leaderServer, 1);
    await vi.waitFor(() => expect(leader.state).toBe('open'));
    // Frozen before the follower's tab opens: two connect timeouts (4010), then a socket of its own. (Not
    // heartbeat timeouts: a short one would end the follower's own socket too.)
    leaderTab.dead = true;
    const follower = clientIn(browser.tab(), followerServer, { connectTimeoutMs: 300 });
    const watch = follower.watch('t1');
    const own = await acceptReal(followerServer, 1);
    const task = new FakeTask('t1', 5);
    task.item('a');
    own.push({ type: 'snapshot', task: task.view() });
    await vi.waitFor(() => expect(watch.getSnapshot().seq).toBe(1));
    // Thawed: the leader's real socket stayed open, and it relays what the server sends.
    leaderTab.dead = false;
    real.push({ type: 'heartbeat', time: 1, seqs: {} });
    // Before: the follower's own socket stayed open beside the shared one (two sockets for one browser).
    // Closed with a code: until 7 December 2026 without one, which the server saw as 1005 (no status).
    await vi.waitFor(() => expect(own.closedWith).toEqual([{ code: 1000, reason: 'leader tab up' }]));
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(2));
    expect(real.frames('subscribe').at(-1)).toMatchObject({ taskId: 't1', afterSeq: 1 });
    expect(followerServer.sockets).toHaveLength(1);
    task.item('b');
    real.push({ type: 'snapshot', task: task.view() });
    await vi.waitFor(() => expect(watch.getSnapshot().seq).toBe(2));
    await Promise.all([leader.close(), follower.close()]);
  });

  it('rejects a missing BroadcastChannel or lock manager with invalid_input', () => {
    const scope = globalThis as { navigator?: unknown };
    if (scope.navigator !== undefined && (scope.navigator as { locks?: unknown }).locks !== undefined) return;
    expect(() => tabSharing()).toThrow(expect.objectContaining({ code: 'invalid_input' }));
  });

  it('rejects a channel that is not a factory (a BroadcastChannel given as it is) with invalid_input, at once', () => {
    const tab = new Browser().tab();
    const instance = tab.channel('finishline:ws://example.test/progress');
    // Before, taken as it was: each socket the client opened threw a TypeError, and the client retried for
    // ever, saying only "could not create a socket".
    expect(() => tabSharing({ channel: instance as never, locks: tab.locks })).toThrow(
      expect.objectContaining({
        code: 'invalid_input',
        message: expect.stringMatching(/no channel factory/),
      }),
    );
  });

  it('renewToken() in a tab reaches the server through the leader, and each tab speaks the selected version', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const issued: number[] = [];
    const clients = [browser.tab(), browser.tab()].map(
      (tab, index) =>
        new ProgressClient({
          url: 'ws://example.test/progress',
          WebSocket: server.WebSocket,
          token: () => {
            // The same first token in both tabs (tabs with different ones do not share a socket).
            const count = issued.filter((t) => t === index).length + 1;
            issued.push(index);
            const token = count === 1 ? 'tok' : `tab${index}-${count}`;
            return token;
          },
          pageEvents: false,
          shareAcrossTabs: tabSharing({ channel: tab.channel, locks: tab.locks }),
        }),
    );
    for (const client of clients) client.watch('t1');
    const real = await acceptReal(server, 1);
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(2));
    await vi.waitFor(() => {
      for (const client of clients) expect(client.state).toBe('open');
    });
    // One authentication opened the socket for both tabs; a renewal in either goes to the server.
    expect(real.frames('auth')).toHaveLength(1);
    expect(await (clients[1] as ProgressClient).renewToken()).toBe(true);
    await vi.waitFor(() => expect(real.frames('auth')).toHaveLength(2));
    expect(real.frames('auth').at(-1)).toEqual({ type: 'auth', token: 'tab1-2', protocol: PROTOCOL_VERSION });
    await Promise.all(clients.map((client) => client.close()));
  });

  it('a credential the server refuses ends only the client of the tab that sent it: the other tabs reconnect with their own and keep watching', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const [staleTab, freshTab] = [browser.tab(), browser.tab()] as [Tab, Tab];
    // A tab opened long ago, whose page holds a credential that is no longer valid, leads.
    const stale = clientIn(staleTab, server, { token: 'stale' });
    const refusedWatch = stale.watch('t1');
    await vi.waitFor(() => expect(server.sockets).toHaveLength(1));
    const first = server.last;
    first.open();
    await vi.waitFor(() =>
      expect(first.frames('auth')).toEqual([expect.objectContaining({ token: 'stale' })]),
    );
    const fresh = clientIn(freshTab, server);
    const errors: string[] = [];
    fresh.on('error', (error) => errors.push(error.code));
    const watch = fresh.watch('t1');
    const log = record(watch);
    await new Promise((resolve) => setTimeout(resolve, 20));
    // The server refuses the first auth frame, the stale tab's: an error, then close 4001.
    first.push({ type: 'error', code: 'unauthenticated', message: 'Invalid credentials' });
    first.serverClose(4001, 'Invalid credentials');
    await expect(refusedWatch.done).rejects.toMatchObject({ code: 'unauthenticated' });
    // Before, every tab's client took the close for its own and ended for good (state closed,
    // unauthenticated), though only the stale tab's credential was refused.
    const second = await acceptReal(server, 2);
    expect(second.frames('auth')).toEqual([expect.objectContaining({ token: 'tok' })]);
    await vi.waitFor(() => expect(second.frames('subscribe')).toHaveLength(1));
    const task = new FakeTask('t1', 1);
    second.push({ type: 'snapshot', task: task.view() });
    second.push({ type: 'event', event: task.end('completed') });
    await watch.done;
    expect(log).toEqual(['snapshot@0', 'completed@1', 'finished@1']);
    expect(errors).toEqual([]);
    expect(browser.locksOf(staleTab)).toEqual([]);
    await fresh.close();
  });

  it("a tab whose credential is another principal's is served as itself, not as the tab whose auth the shared socket sent: it watches its own tasks and not the other's", async () => {
    const { server, url } = await realServer(aliceOrBob);
    const sockets: WebSocket[] = [];
    const Real = function (this: unknown, address: string, protocols?: string | string[]) {
      const socket = new WebSocket(address, protocols);
      sockets.push(socket);
      return socket;
    } as unknown as WebSocketConstructorLike;
    const browser = new Browser();
    const alices = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const bobs = await server.tasks.create({ owner: 'bob', kind: 'k' });
    const alice = clientIn(browser.tab(), { WebSocket: Real }, { url });
    onTestFinished(() => alice.close());
    const kept = alice.watch(alices.id);
    await vi.waitFor(() => expect(kept.getSnapshot().status).toBe('running'));
    // Another tab, where the user logged out and in as bob (or a token function that answers per tab).
    const bob = clientIn(browser.tab(), { WebSocket: Real }, { url, token: 'bob' });
    onTestFinished(() => bob.close());
    const outcome = (watch: Watch) =>
      watch.done.then(
        () => 'done',
        (error: { code: string }) => error.code,
      );
    const own = bob.watch(bobs.id);
    const others = outcome(bob.watch(alices.id));
    // Before, bob's tab was served as alice: its own task was refused, alice's was watched.
    const watching = new Promise((resolve) => setTimeout(resolve, 2000, 'watching'));
    expect(await Promise.race([others, watching])).toBe('task_not_found');
    await vi.waitFor(() => expect(own.getSnapshot().status).toBe('running'));
    await bobs.complete();
    expect(await outcome(own)).toBe('done');
    // Alice's tab still shares its socket, and bob's has one of its own.
    expect(kept.getSnapshot().status).toBe('running');
    expect(sockets.filter((socket) => socket.readyState === WebSocket.OPEN)).toHaveLength(2);
  });

  it("a tab sent to sockets of its own (another credential) does not try the shared socket again when the leader's real socket closes and reopens", async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const { connects } = spy(browser);
    const alice = clientIn(browser.tab(), server);
    alice.watch('t1');
    const real = await acceptReal(server, 1);
    await vi.waitFor(() => expect(alice.state).toBe('open'));
    const bob = clientIn(browser.tab(), server, { token: 'bob' });
    bob.watch('t2');
    // Sent to a socket of its own after its first attempt through the leader.
    const bobs = await acceptReal(server, 2);
    await vi.waitFor(() => expect(bob.state).toBe('open'));
    expect(new Set(connects.map((connect) => connect.from)).size).toBe(2);
    const before = connects.length;
    // The network drops every socket: each client reconnects, alice's through a new real socket.
    real.serverClose(1006);
    bobs.serverClose(1006);
    // Alice's new real socket and bob's own, in either order.
    for (const index of [2, 3]) {
      await vi.waitFor(() => expect(server.sockets.length).toBeGreaterThan(index));
      const socket = server.sockets[index] as FakeSocket;
      socket.open();
      await vi.waitFor(() => expect(socket.frames('auth')).toHaveLength(1));
      socket.push(hello);
    }
    await vi.waitFor(() => expect([alice.state, bob.state]).toEqual(['open', 'open']));
    // Before, the leader's close had bob's tab try the shared socket once more (an attempt, a refusal and
    // a backoff step lost each time; a connect timeout for a tab without a token). Only alice's tab (the
    // first to connect) connects through it: taken by every tab, the leader's `own` sent alice's too to
    // sockets of its own.
    expect(new Set(connects.slice(before).map((connect) => connect.from))).toEqual(
      new Set([connects[0]?.from]),
    );
    await Promise.all([alice.close(), bob.close()]);
  });

  it("a tab of another principal whose token function is slow is shown nothing of the shared socket's tasks before its auth is checked", async () => {
    const { server, url } = await realServer(aliceOrBob);
    const browser = new Browser();
    const alices = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await alices.progress({ done: 1, total: 4 });
    const alice = clientIn(
      browser.tab(),
      { WebSocket: WebSocket as unknown as WebSocketConstructorLike },
      { url },
    );
    onTestFinished(() => alice.close());
    const kept = alice.watch(alices.id);
    await vi.waitFor(() => expect(kept.getSnapshot().status).toBe('running'));
    // Bob's tab (another login), whose token function asks the page's backend: its answer comes late.
    let answer: (token: string) => void = noop;
    const token = new Promise<string>((resolve) => {
      answer = resolve;
    });
    const bob = clientIn(
      browser.tab(),
      { WebSocket: WebSocket as unknown as WebSocketConstructorLike },
      { url, token: () => token },
    );
    onTestFinished(() => bob.close());
    const seen: unknown[] = [];
    const watch = bob.watch(alices.id);
    watch.subscribe(() => seen.push(watch.getSnapshot().progress));
    const refused = watch.done.then(
      () => 'done',
      (error: { code: string }) => error.code,
    );
    // Before, the cached hello opened bob's socket at once: its subscribe went out on alice's credential,
    // and alice's task reached bob's watch.
    await new Promise((resolve) => setTimeout(resolve, 300));
    answer('bob');
    expect(await refused).toBe('task_not_found');
    expect(seen).toEqual([null]);
  });

  it("a tab whose token function has not answered when the real socket's first hello comes is not handed it: nothing it sends goes out on the other tab's credential", async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const alice = clientIn(browser.tab(), server);
    alice.watch('t1');
    await vi.waitFor(() => expect(server.sockets).toHaveLength(1));
    let answer: (token: string) => void = noop;
    const token = new Promise<string>((resolve) => {
      answer = resolve;
    });
    const bob = clientIn(browser.tab(), server, { token: () => token });
    bob.watch('t2');
    // Both tabs' sockets wait on the real socket, which opens: alice's auth goes, and the server's hello.
    await new Promise((resolve) => setTimeout(resolve, 20));
    const real = await acceptReal(server, 1);
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(1));
    await new Promise((resolve) => setTimeout(resolve, 50));
    // Before, the hello went to every tab: bob's client subscribed on alice's credential.
    expect(real.frames('subscribe')).toEqual([expect.objectContaining({ taskId: 't1' })]);
    answer('bob');
    // Bob's token is not alice's: his tab's sockets are its own.
    await vi.waitFor(() => expect(server.sockets).toHaveLength(2));
    expect(real.frames('subscribe')).toHaveLength(1);
    await alice.close();
    await bob.close();
  });

  it('a tab without a token, behind a socket authenticated with one, gets a socket of its own when no hello comes, and the shared socket stays', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const alice = clientIn(browser.tab(), server);
    alice.watch('t1');
    const real = await acceptReal(server, 1);
    await vi.waitFor(() => expect(alice.state).toBe('open'));
    // A tab whose page set no token (logged out, say): it is not handed the hello of alice's credential.
    const anonymous = clientIn(browser.tab(), server, { token: undefined, connectTimeoutMs: 200 });
    anonymous.watch('t2');
    await vi.waitFor(() => expect(server.sockets).toHaveLength(2));
    const own = server.last;
    own.open();
    own.push(hello);
    // Before, its connect timeout (4010) had the leader replace the real socket, every tab's client
    // reconnecting, and its next socket went through the leader again, for ever.
    expect(real.readyState).toBe(1);
    expect(real.frames('subscribe')).toEqual([expect.objectContaining({ taskId: 't1' })]);
    await vi.waitFor(() =>
      expect(own.frames('subscribe')).toEqual([expect.objectContaining({ taskId: 't2' })]),
    );
    expect(own.frames('auth')).toEqual([]);
    await anonymous.close();
    await alice.close();
  });

  it.each(['after', 'before'])(
    'a tab without a token that joins %s the tab with one gets a socket of its own at once, not after its connect timeout',
    async (order) => {
      const browser = new Browser();
      const server = new FakeServer();
      // Its connect timeout far off: before 6 December 2026 it waited all of it (10 s by default) for a hello
      // it could not be handed, each time it joined a socket with a token in force.
      const anonymousTab = browser.tab();
      const joinAnonymously = () => {
        const anonymous = clientIn(anonymousTab, server, { token: undefined, connectTimeoutMs: 600_000 });
        anonymous.watch('t2');
        return anonymous;
      };
      const early = order === 'before' ? joinAnonymously() : undefined;
      const alice = clientIn(browser.tab(), server);
      alice.watch('t1');
      const real = await acceptReal(server, 1);
      await vi.waitFor(() => expect(alice.state).toBe('open'));
      const anonymous = early ?? joinAnonymously();
      await vi.waitFor(() => expect(server.sockets).toHaveLength(2));
      const own = server.last;
      own.open();
      own.push(hello);
      await vi.waitFor(() =>
        expect(own.frames('subscribe')).toEqual([expect.objectContaining({ taskId: 't2' })]),
      );
      expect(own.frames('auth')).toEqual([]);
      // The shared socket serves alice's tab alone, as before.
      expect(real.readyState).toBe(1);
      expect(real.frames('subscribe')).toEqual([expect.objectContaining({ taskId: 't1' })]);
      await anonymous.close();
      await alice.close();
    },
  );

  it("a tab whose token function hands out expired credentials does not end the other tabs' clients with its second expiry", async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const [staleTab, freshTab] = [browser.tab(), browser.tab()] as [Tab, Tab];
    // Its first token is the other tab's (tabs with different ones do not share a socket), then expired.
    let issued = 0;
    const stale = clientIn(staleTab, server, { token: () => (issued++ ? 'expired' : 'tok') });
    const staleWatch = stale.watch('t1');
    const first = await acceptReal(server, 1);
    const fresh = clientIn(freshTab, server, { token: () => 'tok' });
    const watch = fresh.watch('t1');
    await vi.waitFor(() => expect(first.frames('subscribe')).toHaveLength(2));
    // The credential in force (the stale tab's) expires: 4011.
    first.push({ type: 'error', code: 'token_expired', message: 'The credential expired' });
    first.serverClose(4011, 'The credential expired; reconnect with a fresh one');
    // The stale tab reconnects at once and its auth goes first: the server refuses it at once, 4011 again.
    await vi.waitFor(() => expect(server.sockets).toHaveLength(2));
    const second = server.last;
    second.open();
    await vi.waitFor(() =>
      expect(second.frames('auth')).toEqual([expect.objectContaining({ token: 'expired' })]),
    );
    second.push({ type: 'error', code: 'token_expired', message: 'The credential expired' });
    second.serverClose(4011, 'The credential expired; reconnect with a fresh one');
    await expect(staleWatch.done).rejects.toMatchObject({ code: 'token_expired' });
    // Before, the fresh tab's client took both closes for its own: a second expiry before a hello, fatal.
    const third = await acceptReal(server, 3);
    expect(third.frames('auth')).toEqual([expect.objectContaining({ token: 'tok' })]);
    await vi.waitFor(() => expect(third.frames('subscribe')).toHaveLength(1));
    const task = new FakeTask('t1', 1);
    third.push({ type: 'snapshot', task: task.view() });
    third.push({ type: 'event', event: task.end('completed') });
    await expect(watch.done).resolves.toMatchObject({ status: 'completed' });
    await fresh.close();
  });

  it("a renewal the server refuses (another principal's token) ends only the client of the tab that renewed; the others hear no error and resume", async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const tokens = ['tok', 'tok'];
    const clients = [browser.tab(), browser.tab()].map((tab, index) =>
      clientIn(tab, server, { token: () => tokens[index] as string }),
    ) as [ProgressClient, ProgressClient];
    const errors: string[][] = [[], []];
    for (const [index, client] of clients.entries())
      client.on('error', (error) => errors[index]?.push(error.code));
    const watches = clients.map((client) => client.watch('t1'));
    const first = await acceptReal(server, 1);
    await vi.waitFor(() => expect(first.frames('subscribe')).toHaveLength(2));
    const task = new FakeTask('t1', 2);
    first.push({ type: 'snapshot', task: task.view() });
    await vi.waitFor(() => {
      for (const watch of watches) expect(watch.getSnapshot().status).toBe('running');
    });
    // The second tab's page logged in as someone else, and renews with that token: the server refuses it.
    tokens[1] = 'bob';
    expect(await clients[1].renewToken()).toBe(true);
    await vi.waitFor(() => expect(first.frames('auth')).toHaveLength(2));
    first.push({
      type: 'error',
      code: 'unauthenticated',
      message: 'auth must keep the principal of the socket',
    });
    first.serverClose(4001, 'auth must keep the principal of the socket');
    await expect(watches[1]?.done).rejects.toMatchObject({ code: 'unauthenticated' });
    const second = await acceptReal(server, 2);
    await vi.waitFor(() =>
      expect(second.frames('subscribe')).toEqual([expect.objectContaining({ afterSeq: 0 })]),
    );
    second.push({ type: 'event', event: task.item('a') });
    second.push({ type: 'event', event: task.end('completed') });
    await watches[0]?.done;
    // Before, the first tab heard the second's refusal as its own error, and its client ended with it.
    expect(errors[0]).toEqual([]);
    expect(clients[1].state).toBe('closed');
    await clients[0].close();
  });

  it('a renewal the server has not accepted (its check pending, or answered `timeout`) admits no tab with that token: the socket still speaks with the credential before it', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const tokens = ['tok', 'tok'];
    const [alice, renewing] = [browser.tab(), browser.tab()].map((tab, index) =>
      clientIn(tab, server, { token: () => tokens[index] as string }),
    ) as [ProgressClient, ProgressClient];
    alice.watch('t1');
    renewing.watch('t1');
    const real = await acceptReal(server, 1);
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(2));
    // The second tab's page logged in as bob and renews: the server's check of bob's token does not answer
    // in time (an auth backend down), so the socket keeps alice's credential.
    tokens[1] = 'bob';
    expect(await renewing.renewToken()).toBe(true);
    await vi.waitFor(() => expect(real.frames('auth')).toHaveLength(2));
    real.push({
      type: 'error',
      code: 'timeout',
      message: 'The check of the renewed credential did not answer in time',
    });
    // Another tab of bob's joins. Before, the leader took bob's token for the one in force as soon as it
    // forwarded it: this tab was handed the hello, and its subscribe went out on alice's credential.
    const bob = clientIn(browser.tab(), server, { token: 'bob' });
    bob.watch('t2');
    const own = await acceptReal(server, 2);
    expect(own.frames('auth')).toEqual([expect.objectContaining({ token: 'bob' })]);
    await vi.waitFor(() =>
      expect(own.frames('subscribe')).toEqual([expect.objectContaining({ taskId: 't2' })]),
    );
    expect(real.frames('subscribe').map((frame) => frame.taskId)).toEqual(['t1', 't1']);
    // A renewal the server answers (a token renewed for the same user) is the credential in force: a tab
    // that brings it shares the socket.
    tokens[0] = 'tok2';
    expect(await alice.renewToken()).toBe(true);
    await vi.waitFor(() => expect(real.frames('auth')).toHaveLength(3));
    real.push(hello);
    const renewed = clientIn(browser.tab(), server, { token: 'tok2' });
    renewed.watch('t3');
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(3));
    expect(server.sockets).toHaveLength(2);
    await Promise.all([alice, renewing, bob, renewed].map((client) => client.close()));
  });

  it("two renewals in flight (a second tab's forwarded before the first's hello): the first hello puts the first token in force, not the second, and a tab bringing the second waits for its own hello", async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const tokens = ['tok', 'tok'];
    const [first, second] = [browser.tab(), browser.tab()].map((tab, index) =>
      clientIn(tab, server, { token: () => tokens[index] as string }),
    ) as [ProgressClient, ProgressClient];
    first.watch('t1');
    second.watch('t1');
    const real = await acceptReal(server, 1);
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(2));
    // Both tabs renew before the server answers either: it checks tok2, then tok3 (one check at a time).
    tokens[0] = 'tok2';
    tokens[1] = 'tok3';
    expect(await first.renewToken()).toBe(true);
    await vi.waitFor(() => expect(real.frames('auth')).toHaveLength(2));
    expect(await second.renewToken()).toBe(true);
    await vi.waitFor(() => expect(real.frames('auth')).toHaveLength(3));
    // The hello answering tok2. Before, the leader took it for tok3's (the latest renewal forwarded): a tab
    // bringing tok3 was handed the hello, and its subscribe went out on tok2's credential, tok3 unchecked.
    real.push(hello);
    const early = clientIn(browser.tab(), server, { token: 'tok3' });
    early.watch('t2');
    const own = await acceptReal(server, 2);
    expect(own.frames('auth')).toEqual([expect.objectContaining({ token: 'tok3' })]);
    await vi.waitFor(() =>
      expect(own.frames('subscribe')).toEqual([expect.objectContaining({ taskId: 't2' })]),
    );
    // tok2 is in force: a tab bringing it shares the socket.
    const renewed = clientIn(browser.tab(), server, { token: 'tok2' });
    renewed.watch('t3');
    await vi.waitFor(() => expect(real.frames('subscribe').map((frame) => frame.taskId)).toContain('t3'));
    // The hello answering tok3: now a tab bringing it shares the socket.
    real.push(hello);
    const late = clientIn(browser.tab(), server, { token: 'tok3' });
    late.watch('t4');
    await vi.waitFor(() => expect(real.frames('subscribe').map((frame) => frame.taskId)).toContain('t4'));
    expect(real.frames('subscribe').map((frame) => frame.taskId)).not.toContain('t2');
    expect(server.sockets).toHaveLength(2);
    await Promise.all([first, second, early, renewed, late].map((client) => client.close()));
  });

  it('a tab behind a leader whose server selected version 1 speaks version 1', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const client = new ProgressClient({
      url: 'ws://example.test/progress',
      WebSocket: server.WebSocket,
      token: () => 'tok',
      pageEvents: false,
      shareAcrossTabs: tabSharing({ channel: browser.tab().channel, locks: browser.tab().locks }),
    });
    client.watch('t1');
    await vi.waitFor(() => expect(server.sockets).toHaveLength(1));
    server.last.protocol = PROTOCOL_NAME_V1;
    server.last.open();
    await vi.waitFor(() =>
      expect(server.last.frames('auth')).toEqual([{ type: 'auth', token: 'tok', protocol: 1 }]),
    );
    await client.close();
  });

  it('a real socket that fails before it opens closes the virtual sockets at once (clients retry, not wait connectTimeoutMs)', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const clients = [browser.tab(), browser.tab()].map((tab) =>
      clientIn(tab, server, { connectTimeoutMs: 60_000 }),
    );
    for (const client of clients) client.watch('t1');
    await vi.waitFor(() => expect(server.sockets).toHaveLength(1));
    // Let both tabs' connects reach the leader, then the upgrade fails (server down, 1006).
    await new Promise((resolve) => setTimeout(resolve, 50));
    server.last.serverClose(1006);
    // Every client should notice and reconnect (first retry below reconnect.firstDelayMs, 100 ms).
    await vi.waitFor(() => expect(server.sockets.length).toBeGreaterThanOrEqual(2), { timeout: 3000 });
    await Promise.all(clients.map((client) => client.close()));
  });

  it('a malformed message on the channel neither throws in a tab nor pins the real socket open', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const tab = browser.tab();
    const client = clientIn(tab, server);
    // Another page on the channel (another client version, or a bug) posts what this one cannot read.
    const stranger = browser.channel(browser.tab(), 'finishline:ws://example.test/progress');
    client.watch('t1');
    const real = await acceptReal(server, 1);
    const errors = await uncaughtDuring(async () => {
      stranger.postMessage(null);
      stranger.postMessage({ t: 'connect', from: 'x9' }); // no id
      await new Promise((resolve) => setTimeout(resolve, 50));
      await client.close();
      // The only tab gone, the leader closes the real socket.
      await vi.waitFor(() => expect(real.closedWith).toEqual([{ code: 1000, reason: 'no tab watching' }]), {
        timeout: 1000,
      });
    });
    expect(errors).toEqual([]);
  });
  it("a wrapped socket refuses close() with a reason past 123 bytes or a code a page may not use, as a browser's does, and posts nothing", async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const { leader, real, socket } = await leaderAndWrappedSocket(browser, server);
    await vi.waitFor(() => expect(socket.readyState).toBe(1));
    // 62 two-byte characters: 124 bytes, though 62 UTF-16 units.
    expect(() => socket.close(4010, 'é'.repeat(62))).toThrow(
      expect.objectContaining({ name: 'SyntaxError' }),
    );
    expect(() => socket.close(1001)).toThrow(expect.objectContaining({ name: 'InvalidAccessError' }));
    expect(() => socket.close(5000, 'x')).toThrow(expect.objectContaining({ name: 'InvalidAccessError' }));
    await new Promise((resolve) => setTimeout(resolve, 50));
    // Nothing reached the leader: the socket and the real one are open.
    expect(socket.readyState).toBe(1);
    expect(real.closedWith).toEqual([]);
    socket.close(3000, 'é'.repeat(61));
    expect(socket.readyState).toBe(3);
    await leader.close();
  });

  it('a bye from another tab whose reason the real socket refuses still closes the real socket (the leader throws nothing), and every tab reconnects', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const { channel, connects } = spy(browser);
    const [leaderTab, followerTab] = [browser.tab(), browser.tab()] as [Tab, Tab];
    const clients = [clientIn(leaderTab, server), clientIn(followerTab, server)];
    for (const client of clients) client.watch('t1');
    const real = await acceptReal(server, 1);
    closeLikeABrowser(real);
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(2));
    const follower = connects.find(
      (connect) => browser.holder(`finishline:tab:${connect.from}`) === followerTab,
    ) as { from: string; id: string };
    const errors = await uncaughtDuring(async () => {
      // Another version of the client, or a page's own use of the wrapped socket, gives up on its socket
      // (4010, which replaces the real socket) with a reason over 123 bytes.
      channel.postMessage({
        t: 'bye',
        from: follower.from,
        id: follower.id,
        code: 4010,
        reason: 'x'.repeat(200),
      });
      await vi.waitFor(() => expect(real.closedWith).toEqual([{ code: 4010, reason: undefined }]));
      const second = await acceptReal(server, 2);
      await vi.waitFor(() => expect(second.frames('subscribe')).toHaveLength(2));
    });
    expect(errors).toEqual([]);
    await Promise.all(clients.map((client) => client.close()));
  });

  it('a tab whose Web Locks are refused (a sandboxed frame, an opaque origin) opens a socket of its own and says why once', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const tab = browser.tab();
    const refused = new DOMException('The request was denied.', 'SecurityError');
    const locks: LockManagerLike = { request: () => Promise.reject(refused) };
    const client = clientIn(tab, server, { shareAcrossTabs: tabSharing({ channel: tab.channel, locks }) });
    const errors: unknown[] = [];
    client.on('error', (error) => errors.push(error));
    client.watch('t1');
    // Before, the tab waited for the lock for ever: no socket, and the client stuck at connecting.
    const first = await acceptReal(server, 1);
    await vi.waitFor(() => expect(client.state).toBe('open'));
    expect(first.url).toBe('ws://example.test/progress');
    expect(errors).toEqual([
      expect.objectContaining({
        code: 'internal',
        cause: expect.objectContaining({ message: 'tabSharing: Web Locks refused', cause: refused }),
      }),
    ]);
    expect(browser.channelsOf(tab)).toBe(0);
    // Its sockets stay its own, and the refusal is not said again.
    first.serverClose(1006);
    await acceptReal(server, 2);
    await vi.waitFor(() => expect(client.state).toBe('open'));
    expect(errors).toHaveLength(1);
    await client.close();
  });

  it('a socket asked for again (a connect repeated on a leader change) gets one hello', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const { leader, real, socket } = await leaderAndWrappedSocket(browser, server);
    const received: string[] = [];
    socket.onmessage = ({ data }: { data: string }) =>
      received.push((JSON.parse(data) as { type: string }).type);
    // The hello comes once the leader has its auth (the real socket's token).
    socket.onopen = () =>
      socket.send(JSON.stringify({ type: 'auth', token: 'tok', protocol: PROTOCOL_VERSION }));
    // A late announcement from a tab that is gone: the tab asks again for its socket, then again once it
    // finds that tab's lock free; the leader answers each connect with an open and the cached hello.
    const late = browser.channel(browser.tab(), 'finishline:ws://example.test/progress');
    late.postMessage({ t: 'leader', from: 'gone' });
    await vi.waitFor(() => expect(socket.readyState).toBe(1));
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(received).toEqual(['hello']);
    real.push('{"type":"heartbeat","tasks":{}}');
    await vi.waitFor(() => expect(received).toEqual(['hello', 'heartbeat']));
    socket.close();
    await leader.close();
  });

  it("the leader forgets a socket's task once it is unsubscribed: the last tab to let go of a task unsubscribes the real socket", async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const clients = [browser.tab(), browser.tab()].map((tab) => clientIn(tab, server, { ackDelayMs: 0 }));
    const [first, second] = clients.map((client) => client.watch('t1')) as [Watch, Watch];
    const other = (clients[0] as ProgressClient).watch('t2');
    const real = await acceptReal(server, 1);
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(3));
    // One tab lets go of t1: the other still watches it, so the server hears nothing.
    first.close();
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(real.frames('unsubscribe')).toEqual([]);
    second.close();
    await vi.waitFor(() =>
      expect(real.frames('unsubscribe')).toEqual([{ type: 'unsubscribe', taskId: 't1' }]),
    );
    // A task that finishes is unsubscribed by each tab after its terminal ack: the last one reaches the server.
    const again = clients.map((client) => client.watch('t3'));
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(5));
    const task = new FakeTask('t3', 1);
    real.push({ type: 'snapshot', task: task.view() });
    real.push({ type: 'event', event: task.end('completed') });
    await Promise.all(again.map((watch) => watch.done));
    await vi.waitFor(() =>
      expect(real.frames('unsubscribe').filter((frame) => frame.taskId === 't3')).toHaveLength(1),
    );
    other.close();
    await Promise.all(clients.map((client) => client.close()));
  });

  it('the leader forgets a task the server refused once the refusal is relayed: a tab trying many ids keeps none of them', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const [leader, follower] = [browser.tab(), browser.tab()].map((tab) => clientIn(tab, server)) as [
      ProgressClient,
      ProgressClient,
    ];
    leader.watch('t1');
    const real = await acceptReal(server, 1);
    await vi.waitFor(() => expect(leader.state).toBe('open'));
    // A dashboard paging through tasks that are gone, or not the user's: each watch fails, and its
    // client sends no unsubscribe (the server follows a refused task no more).
    const ids = Array.from({ length: 20 }, (_, i) => `gone${i}`);
    const failed = ids.map((id) =>
      follower.watch(id).done.then(
        () => 'done',
        (error: { code: string }) => error.code,
      ),
    );
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(21));
    for (const [i, id] of ids.entries()) {
      real.push({ type: 'error', code: i % 2 ? 'forbidden' : 'task_not_found', message: 'no', taskId: id });
    }
    expect(new Set(await Promise.all(failed))).toEqual(new Set(['forbidden', 'task_not_found']));
    // What the leader kept shows when the tab's socket goes: it unsubscribes what only that tab watched.
    // Before, it still held every refused id, and sent an unsubscribe for each.
    await follower.close();
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(real.frames('unsubscribe')).toEqual([]);
    expect(real.closedWith).toEqual([]);
    await leader.close();
  });

  it('a task refused to one tab, then created and watched by another, is unsubscribed when that tab lets go of it', async () => {
    const { early, late, keep, real } = await twoTabsOnOneSocket();
    const refused = early.watch('t2');
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(2));
    real.push({ type: 'error', code: 'task_not_found', message: 'no', taskId: 't2' });
    await expect(refused.done).rejects.toMatchObject({ code: 'task_not_found' });
    // The task is created; the other tab watches it, then lets go of it.
    const watch = late.watch('t2');
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(3));
    const task = new FakeTask('t2', 2);
    real.push({ type: 'snapshot', task: task.view() });
    real.push({ type: 'event', event: task.item('a') });
    await vi.waitFor(() => expect(watch.getSnapshot().seq).toBe(1));
    watch.close();
    // Before, the refused tab's stale entry made the leader believe t2 still wanted, and it swallowed the
    // unsubscribe: the server went on sending t2 to every tab.
    await vi.waitFor(() =>
      expect(real.frames('unsubscribe')).toEqual([{ type: 'unsubscribe', taskId: 't2' }]),
    );
    keep.close();
    await Promise.all([early, late].map((client) => client.close()));
  });

  it("a refusal goes to the tab whose subscribe it answers: a tab that subscribed a task just after another tab's subscribe of it was refused still watches it", async () => {
    const { early, late, keep, real } = await twoTabsOnOneSocket();
    // One tab subscribes before the task exists; the task is created; the other tab subscribes it, and its
    // subscribe reaches the server after the first one was refused there.
    const refused = early.watch('t2');
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(2));
    const watch = late.watch('t2');
    const log = record(watch);
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(3));
    // The server answers each subscribe in turn; a refusal echoes its subscribe's id, when it had one.
    const { id } = real.frames('subscribe')[1] as { id?: string };
    real.push({
      type: 'error',
      code: 'task_not_found',
      message: 'no',
      taskId: 't2',
      ...(id && { requestId: id }),
    });
    const task = new FakeTask('t2', 1);
    real.push({ type: 'snapshot', task: task.view() });
    await expect(refused.done).rejects.toMatchObject({ code: 'task_not_found' });
    // Before, the refusal went to every tab: the late tab's watch failed with task_not_found before its
    // own snapshot arrived, which it then ignored.
    await vi.waitFor(() => expect(log).toEqual(['snapshot@0']));
    // The refused tab watches it again (it exists now) and lets go of it: the other tab still wants it, so
    // the server hears no unsubscribe. (Before, the refusal took t2 from every tab's socket at the leader.)
    const again = early.watch('t2');
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(4));
    real.push({ type: 'snapshot', task: task.view() });
    await vi.waitFor(() => expect(again.getSnapshot().status).toBe('running'));
    again.close();
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(real.frames('unsubscribe')).toEqual([]);
    real.push({ type: 'event', event: task.end('completed') });
    await watch.done;
    expect(log).toEqual(['snapshot@0', 'completed@1', 'finished@1']);
    keep.close();
    await Promise.all([early, late].map((client) => client.close()));
  });

  it('a rate-limited subscribe goes back to the tab that sent it: the other tabs watching the task hear no error and send nothing more', async () => {
    const { early, late, keep, real } = await twoTabsOnOneSocket();
    const mine = early.watch('t2');
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(2));
    const theirs = late.watch('t2');
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(3));
    const heard = { mine: [] as string[], theirs: [] as string[] };
    mine.on('error', (error) => heard.mine.push(error.code));
    theirs.on('error', (error) => heard.theirs.push(error.code));
    // The server answers the first tab's subscribe and refuses the second's for the socket's rate limit:
    // the refusal names the task and the subscribe's id (the leader's id for that tab's socket).
    const task = new FakeTask('t2', 3);
    real.push({ type: 'snapshot', task: task.view() });
    const { id } = real.frames('subscribe')[2] as { id: string };
    real.push({ type: 'error', code: 'rate_limited', message: 'slow down', taskId: 't2', requestId: id });
    const sentBy = (tab: string) =>
      real.frames('subscribe').filter((frame) => frame.taskId === 't2' && String(frame.id).startsWith(tab));
    const [lateTab] = id.split('/') as [string];
    // The refused tab retries (at once here: random() is 0).
    await vi.waitFor(() => expect(sentBy(lateTab)).toHaveLength(2));
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(heard).toEqual({ mine: [], theirs: ['rate_limited'] });
    // Before, the refusal went to every tab: the first tab's watch, answered, reported a rate limit it
    // never hit and subscribed again, one frame more from a socket already over its budget (N tabs
    // watching a task: N subscribes per refusal).
    expect(real.frames('subscribe').filter((frame) => frame.taskId === 't2')).toHaveLength(3);
    keep.close();
    await Promise.all([early, late].map((client) => client.close()));
  });

  it('tabs that subscribe a task the server is still loading for another tab each get its snapshot, or their own refusal, as soon as the server has it', async () => {
    const rig = await tabsOnARealServer();
    const followers = await Promise.all([rig.follower(), rig.follower(), rig.follower()]);
    const made = await rig.server.tasks.create({ owner: 'alice', kind: 'k' });
    const release = rig.hold();
    // Every tab asks for both tasks in the same tick; the server merges the subscribes it is still loading.
    const found = followers.map((client) => client.watch(made.id));
    const refused = followers.map((client) =>
      client.watch('missing').done.then(
        () => 'done',
        (error: { code: string }) => error.code,
      ),
    );
    const outcomes: string[] = [];
    for (const outcome of refused) void outcome.then((code) => outcomes.push(code));
    await vi.waitFor(() => expect([rig.sent(made.id), rig.sent('missing')]).toEqual([3, 3]));
    await rig.settled();
    release();
    // No tab asks twice (the answer wait is off): each is answered by the one read.
    await vi.waitFor(() => {
      for (const watch of found) expect(watch.getSnapshot().status).toBe('running');
      expect(outcomes).toEqual(['task_not_found', 'task_not_found', 'task_not_found']);
    });
    // Before, the refusal named the first tab's subscribe alone: the other two waited for their answer
    // wait (250 ms at least) to ask again, and, without it, for ever.
    expect([rig.sent(made.id), rig.sent('missing')]).toEqual([3, 3]);
    expect(rig.reads.mock.calls.filter(([id]) => id === 'missing')).toHaveLength(1);
  });

  it('a refusal that answers no subscribe (a task found gone, a renewal re-check) still goes to every tab watching the task', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const clients = [browser.tab(), browser.tab()].map((tab) => clientIn(tab, server));
    const watches = clients.map((client) => client.watch('t1'));
    const real = await acceptReal(server, 1);
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(2));
    real.push({ type: 'snapshot', task: new FakeTask('t1', 3).view() });
    await vi.waitFor(() => {
      for (const watch of watches) expect(watch.getSnapshot().status).toBe('running');
    });
    real.push({ type: 'error', code: 'forbidden', message: 'no longer yours', taskId: 't1' });
    for (const watch of watches) await expect(watch.done).rejects.toMatchObject({ code: 'forbidden' });
    await Promise.all(clients.map((client) => client.close()));
  });

  it("a task found gone, then created again under its id, has its acks reach the server (the leader's ack record of it went with the refusal)", async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const client = clientIn(browser.tab(), server, { ackDelayMs: 0 });
    const first = client.watch('t1');
    const real = await acceptReal(server, 1);
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(1));
    const old = new FakeTask('t1', 3);
    real.push({ type: 'snapshot', task: old.view() });
    real.push({ type: 'event', event: old.item('a') });
    real.push({ type: 'event', event: old.item('b') });
    await vi.waitFor(() => expect(real.frames('ack').at(-1)?.seq).toBe(2));
    // Retention deletes it: the server says so, and follows it no more.
    real.push({ type: 'error', code: 'task_not_found', message: 'gone', taskId: 't1' });
    await expect(first.done).rejects.toMatchObject({ code: 'task_not_found' });
    // A new task under the same id: its seqs start again.
    const watch = client.watch('t1');
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(2));
    const task = new FakeTask('t1', 3);
    real.push({ type: 'snapshot', task: task.view() });
    real.push({ type: 'event', event: task.item('a') });
    await vi.waitFor(() => expect(watch.getSnapshot().seq).toBe(1));
    // Before, the leader still held seq 2 as acknowledged for t1 and dropped this ack as a repeat.
    await vi.waitFor(() => expect(real.frames('ack').at(-1)).toMatchObject({ taskId: 't1', seq: 1 }));
    await client.close();
  });

  it('a terminal ack after a tab subscribed the task again on the shared socket reaches the server, though another tab acked that seq before', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const { leader, real, socket } = await leaderAndWrappedSocket(browser, server);
    await vi.waitFor(() => expect(socket.readyState).toBe(1));
    // A tab that watches t2 acked its terminal seq, and has not let go of it yet (its unsubscribe is on
    // its way, or its client still holds the watch).
    socket.send(JSON.stringify({ type: 'auth', token: 'tok' }));
    socket.send(JSON.stringify({ type: 'subscribe', taskId: 't2', afterSeq: 0 }));
    socket.send(JSON.stringify({ type: 'ack', taskId: 't2', seq: 1 }));
    await vi.waitFor(() => expect(real.frames('ack')).toHaveLength(1));
    // The leader's tab watches t2: the server restarts the socket's subscription of it, with no ack, sends
    // the terminal snapshot and re-sends it until it is acknowledged. Before, the leader dropped this tab's
    // ack as a repeat of the other's: the server re-sent the frame until the last tab unsubscribed.
    const watch = leader.watch('t2');
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(3));
    const task = new FakeTask('t2', 1);
    task.end('completed');
    real.push({ type: 'snapshot', task: task.view() });
    await watch.done;
    await vi.waitFor(() => expect(real.frames('ack')).toHaveLength(2));
    expect(real.frames('ack')[1]).toEqual({ type: 'ack', taskId: 't2', seq: 1 });
    socket.close();
    await leader.close();
  });

  it("a store epoch renewed while the real socket stays open has a shared task's acks of the new epoch reach the server, the terminal one included", async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const clients = [browser.tab(), browser.tab()].map((tab) => clientIn(tab, server, { ackDelayMs: 0 }));
    const { watches, real } = await sharedAtSeq3(server, clients);
    const acked = real.frames('ack').length;
    // The store is restored from a backup and its epoch renewed: the server restarts the subscription with
    // a reset snapshot of the new epoch, where the task is at seq 1 and ends at seq 2.
    const restored = new FakeTask('t1', 5);
    restored.item('a');
    real.push({ type: 'snapshot', task: restored.view(), reset: true, epoch: 'e2' });
    real.push({ type: 'event', event: restored.end() });
    await Promise.all(watches.map((watch) => watch.done));
    // Before, the leader held seq 3 (of the old epoch) as acknowledged and dropped every ack of the new
    // epoch as a repeat: the server never heard the terminal one.
    await vi.waitFor(() =>
      expect(real.frames('ack').slice(acked).at(-1)).toEqual({ type: 'ack', taskId: 't1', seq: 2 }),
    );
    await Promise.all(clients.map((client) => client.close()));
  });

  it('a tab that joins after a store epoch renewal on the open real socket is handed the new epoch: its cursor saved in the old epoch starts over', async () => {
    const browser = new Browser();
    const server = new FakeServer();
    const early = clientIn(browser.tab(), server, { ackDelayMs: 0 });
    const first = early.watch('t1');
    await vi.waitFor(() => expect(server.sockets).toHaveLength(1));
    const real = server.last;
    real.open();
    await vi.waitFor(() => expect(real.frames('auth')).toHaveLength(1));
    real.push({ ...hello, epoch: 'e1' });
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(1));
    const old = new FakeTask('t1', 5);
    for (const key of ['a', 'b', 'c']) old.item(key);
    real.push({ type: 'snapshot', task: old.view(), epoch: 'e1' });
    // The other tab's page saved its cursor (seq 3) in the old epoch.
    const storage = new MemoryCursorStorage();
    storage.save({ ...old.view(), id: cursorKey('t1', 'ws://example.test/progress') }, 'e1');
    // The store is restored and its epoch renewed: the server restarts the subscription with a reset
    // snapshot of the new epoch, where the task is at seq 4.
    const restored = new FakeTask('t1', 5);
    for (const key of ['w', 'x', 'y', 'z']) restored.item(key);
    real.push({ type: 'snapshot', task: restored.view(), reset: true, epoch: 'e2' });
    await vi.waitFor(() => expect(first.getSnapshot().seq).toBe(4));
    const late = clientIn(browser.tab(), server, { persistence: storage });
    late.watch('t1');
    await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(2));
    // Before, the leader handed it the socket's first hello (epoch e1): the tab kept its cursor, and the
    // server, which sent this socket the task in e2, would have taken seq 3 as one of e2 and resumed there.
    expect(real.frames('subscribe')[1]).toMatchObject({ taskId: 't1', afterSeq: 0 });
    await Promise.all([early, late].map((client) => client.close()));
  });

  it("an ack of the old epoch a follower sent before it saw the task's reset, reaching the leader after it, does not keep the new epoch's acks from the server", async () => {
    const browser = new Browser();
    const server = new FakeServer();
    // The follower's acks can be held on their way to the leader.
    const follower = browser.tab();
    const held: (() => void)[] = [];
    let holding = false;
    const channel = (name: string) => {
      const opened = follower.channel(name);
      const post = opened.postMessage.bind(opened);
      opened.postMessage = (message) => {
        const isAck = (message as { t?: string; data?: string }).data?.includes('"type":"ack"') === true;
        if (holding && isAck) held.push(() => post(message));
        else post(message);
      };
      return opened;
    };
    const clients = [browser.tab(), { locks: follower.locks, channel } as Tab].map((tab) =>
      clientIn(tab, server, { ackDelayMs: 0 }),
    );
    const { watches, real, old } = await sharedAtSeq3(server, clients);
    // The follower's ack of seq 4 is slow to reach the leader; the leader's own goes out at once.
    holding = true;
    real.push({ type: 'event', event: old.item('d') });
    await vi.waitFor(() => expect(held).toHaveLength(1));
    await vi.waitFor(() => expect(real.frames('ack').at(-1)?.seq).toBe(4));
    const acked = real.frames('ack').length;
    // The store is restored and its epoch renewed: the task is at seq 1 in the new epoch. Once the leader
    // relayed the reset, the follower's old ack reaches it, then what the follower sends after.
    const restored = new FakeTask('t1', 5);
    restored.item('a');
    real.push({ type: 'snapshot', task: restored.view(), reset: true, epoch: 'e2' });
    await vi.waitFor(() => expect(watches[0]?.getSnapshot().seq).toBe(1));
    holding = false;
    for (const release of held.splice(0)) release();
    real.push({ type: 'event', event: restored.end() });
    await Promise.all(watches.map((watch) => watch.done));
    // Before, the leader forwarded the old ack (which the server refuses: above the task's seq) and held
    // seq 4 as acknowledged, dropping the new epoch's acks as repeats, the terminal one included.
    await vi.waitFor(() =>
      expect(real.frames('ack').slice(acked).at(-1)).toEqual({ type: 'ack', taskId: 't1', seq: 2 }),
    );
    expect(real.frames('ack').slice(acked)).not.toContainEqual({ type: 'ack', taskId: 't1', seq: 4 });
    await Promise.all(clients.map((client) => client.close()));
  });
});

/** The two tabs' watches of `t1` on one real socket, the task at seq 3 of epoch e1, acknowledged. */
async function sharedAtSeq3(server: FakeServer, clients: ReturnType<typeof clientIn>[]) {
  const watches = clients.map((client) => client.watch('t1'));
  const real = await acceptReal(server, 1);
  await vi.waitFor(() => expect(real.frames('subscribe')).toHaveLength(2));
  const old = new FakeTask('t1', 5);
  real.push({ type: 'snapshot', task: old.view(), epoch: 'e1' });
  for (const key of ['a', 'b', 'c']) real.push({ type: 'event', event: old.item(key) });
  await vi.waitFor(() => expect(real.frames('ack').at(-1)?.seq).toBe(3));
  return { watches, real, old };
}
