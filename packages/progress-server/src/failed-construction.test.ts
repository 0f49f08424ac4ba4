import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type ChangeListener, MemoryProgressStore } from '@finishline/core';
import { Gauge, Registry } from 'prom-client';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ProgressServer } from './progress-server.js';

/**
 * A constructor (or `listen()`) that throws part-way leaves nothing behind: a retry in the same process
 * registered the same metric names again and failed, and the lease timers and feed listeners of the
 * failed server ran on.
 */

const noAuth = (): null => null;

/**
 * Runs `fn`, and returns the intervals it set and did not clear. The server unrefs its timers, and Node
 * does not list unref'd timers among its active resources, so they are tracked by wrapping the functions.
 */
function intervalsLeftBy(fn: () => void): number {
  const real = { setInterval, clearInterval };
  const live = new Set<unknown>();
  vi.spyOn(globalThis, 'setInterval').mockImplementation(((...args: Parameters<typeof setInterval>) => {
    const timer = real.setInterval(...args);
    live.add(timer);
    return timer;
  }) as typeof setInterval);
  vi.spyOn(globalThis, 'clearInterval').mockImplementation(((timer: NodeJS.Timeout | undefined) => {
    live.delete(timer);
    real.clearInterval(timer);
  }) as typeof clearInterval);
  try {
    fn();
  } finally {
    vi.restoreAllMocks();
    for (const timer of live) real.clearInterval(timer as NodeJS.Timeout);
  }
  return live.size;
}

/** A memory store whose feed counts its live listeners and can be made to throw. */
function countingStore(failures: { subscribeCall?: number; epochHints?: boolean } = {}) {
  const store = new MemoryProgressStore();
  const feed = store.changes;
  const subscribe = feed.subscribe.bind(feed);
  const onEpochRenewed = feed.onEpochRenewed?.bind(feed);
  const live = { listeners: 0, subscribeCalls: 0 };
  const counted = (stop: () => void) => {
    live.listeners += 1;
    let stopped = false;
    return () => {
      if (!stopped) live.listeners -= 1;
      stopped = true;
      stop();
    };
  };
  Object.assign(feed, {
    subscribe: (listener: ChangeListener) => {
      live.subscribeCalls += 1;
      if (live.subscribeCalls === failures.subscribeCall) throw new Error('feed down');
      return counted(subscribe(listener));
    },
    onEpochRenewed: (listener: () => void) => {
      if (failures.epochHints === true) throw new Error('hints down');
      return counted((onEpochRenewed as NonNullable<typeof onEpochRenewed>)(listener));
    },
  });
  return { store, live };
}

const servers: ProgressServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => server.close({ timeoutMs: 0 })));
});

describe('a constructor that throws', () => {
  it('unregisters the metrics it registered before a name clashed, so a retry registers them all', () => {
    const registry = new Registry();
    // The application's own metric, of a name the server registers last: every other one was registered.
    new Gauge({ name: 'finishline_safety_net_events_total', help: 'mine', registers: [registry] });
    expect(
      () => new ProgressServer({ store: new MemoryProgressStore(), authenticate: noAuth, registry }),
    ).toThrow(
      expect.objectContaining({
        code: 'invalid_input',
        message:
          'ProgressServer: the registry already holds a metric named finishline_safety_net_events_total: pass another metricsPrefix (now "finishline_")',
      }),
    );
    expect(registry.getMetricsAsArray().map((metric) => metric.name)).toEqual([
      'finishline_safety_net_events_total',
    ]);

    registry.removeSingleMetric('finishline_safety_net_events_total');
    servers.push(new ProgressServer({ store: new MemoryProgressStore(), authenticate: noAuth, registry }));
  });

  it.each([
    ['the hub', { subscribeCall: 1 }],
    ['the task API', { subscribeCall: 2 }],
    ['the epoch hints', { epochHints: true }],
  ] as const)('undoes what it set up when subscribing %s to the feed throws', (_, failure) => {
    const registry = new Registry();
    const httpServer: Server = createServer();
    const { store, live } = countingStore(failure);
    const intervals = intervalsLeftBy(() =>
      expect(() => new ProgressServer({ store, authenticate: noAuth, registry, server: httpServer })).toThrow(
        /down/,
      ),
    );
    expect(intervals).toBe(0);
    expect(live.listeners).toBe(0);
    expect(httpServer.listenerCount('upgrade')).toBe(0);
    expect(registry.getMetricsAsArray()).toEqual([]);

    // The same registry, the feed working now.
    const retry = new ProgressServer({
      store: new MemoryProgressStore(),
      authenticate: noAuth,
      registry,
      server: httpServer,
    });
    servers.push(retry);
    expect(httpServer.listenerCount('upgrade')).toBe(1);
  });
});

describe('listen() on a port in use', () => {
  it('rejects with EADDRINUSE and leaves no timer, handle, listener or metric behind', async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = taken.address() as AddressInfo;
      const registry = new Registry();
      const { store, live } = countingStore();
      const before = process.getActiveResourcesInfo();
      await expect(
        ProgressServer.listen({ store, authenticate: noAuth, registry }, { port, host: '127.0.0.1' }),
      ).rejects.toMatchObject({ code: 'EADDRINUSE' });
      expect(live.listeners).toBe(0);
      // The refused listening handle is closed at once, and gone from the list once its close callback ran
      // (the close phase, after this loop turn's immediates).
      for (let turn = 0; turn < 2; turn += 1) await new Promise((resolve) => setImmediate(resolve));
      expect(process.getActiveResourcesInfo().sort()).toEqual(before.sort());
      expect(registry.getMetricsAsArray()).toEqual([]);

      const retry = await ProgressServer.listen(
        { store, authenticate: noAuth, registry },
        { port: 0, host: '127.0.0.1' },
      );
      servers.push(retry);
      expect(live.listeners).toBeGreaterThan(0);
    } finally {
      await new Promise((resolve) => taken.close(resolve));
    }
  });
});
