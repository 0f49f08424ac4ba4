import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ProgressStore, Task, TerminalType } from '@finishline/core';
import { MemoryProgressStore } from '@finishline/core';
import { propertyParams, propertyRuns, propertyTimeoutMs } from '@finishline/core/testing';
import { ProgressServer, type TaskHandle } from '@finishline/server';
import { SqliteProgressStore } from '@finishline/sqlite';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { httpFallback } from '../src/http-fallback.js';
import { MemoryCursorStorage } from '../src/persist.js';
import { ProgressClient } from '../src/progress-client.js';
import { WatchLog } from '../src/testing/watch-log.js';
import type { Watch } from '../src/watch.js';
import { FaultProxy, type FrameVerdict } from './fault-proxy.js';
import { users } from './users.js';

/**
 * Guarantees 1 and 2 of the design end to end, under random fault schedules: the REAL server (memory or
 * SQLite store) runs 3–8 tasks, each a `runBatch` or driven by hand through its `TaskHandle`; 2–3
 * watchers ("pages"), each behind its own fault-injecting proxy, watch every task. The proxies drop,
 * duplicate and delay server → client frames (terminal frames included) and client → server frames (acks,
 * subscribes, pings); delays keep each connection's order, as TCP would; they cut connections and refuse reconnects for a while; pages are reloaded (a new
 * ProgressClient resuming from the same cursor storage). Faults come from a finite schedule per proxy, so
 * the network heals once it is used up.
 *
 * Checked, for every page: its callbacks saw a gap-free sequence (events consecutive, only snapshots jump
 * forward) with no duplicate and nothing after the end; the last page of every watcher ends in the
 * task's terminal state exactly once, with the counters of the store's row; a restored cursor is never
 * ahead of what the previous page was shown; and the server never answered a frame with an error.
 *
 * Real timers, short settings (heartbeat 100 ms, terminal re-send 20 ms, 100% watchdog 300 ms) so a run
 * takes well under 2 s.
 */

/** How one task is driven. */
interface TaskSpec {
  driver: 'batch' | 'handle';
  /** Per item: does it fail? */
  items: boolean[];
  /** Handle driver: progress events between items. */
  progressEvery: number;
  /** Handle driver: how it ends. Batch driver: `cancelled` aborts it after `cancelAfter` items. */
  end: TerminalType;
  cancelAfter: number;
  startDelayMs: number;
  stepDelayMs: number;
  /** The total is announced up front (so the 100% watchdog has work to do), or unknown. */
  knownTotal: boolean;
}

/** A fault in one proxy's schedule, applied to the n-th server → client frame. */
type Fault =
  | { kind: 'pass' }
  | { kind: 'drop' }
  | { kind: 'duplicate' }
  | { kind: 'delay'; ms: number }
  | { kind: 'cut'; refuse: number };

/** Which frame a fault waits for: the next frame of any type, the next event, the next terminal event. */
type Target = 'any' | 'event' | 'terminal';

/** A fault on a client → server frame: acks, subscribes and pings lost, repeated or held. */
type ClientFault =
  | { kind: 'pass' }
  | { kind: 'drop' }
  | { kind: 'duplicate' }
  | { kind: 'delay'; ms: number };

/** Which client frame a client fault waits for. */
type ClientTarget = 'any' | 'ack' | 'subscribe' | 'ping';

interface PageSpec {
  /** Applied in order, each to the next frame matching its target; then the network heals. */
  faults: { on: Target; fault: Fault }[];
  /** The same for client → server frames. */
  clientFaults: { on: ClientTarget; fault: ClientFault }[];
  /** Reload times, in ms from the start of the run. */
  reloads: number[];
}

const faultArbitrary: fc.Arbitrary<Fault> = fc.oneof(
  { weight: 12, arbitrary: fc.constant({ kind: 'pass' as const }) },
  { weight: 3, arbitrary: fc.constant({ kind: 'drop' as const }) },
  { weight: 2, arbitrary: fc.constant({ kind: 'duplicate' as const }) },
  {
    weight: 2,
    arbitrary: fc.integer({ min: 1, max: 60 }).map((ms) => ({ kind: 'delay' as const, ms })),
  },
  {
    weight: 1,
    arbitrary: fc.integer({ min: 0, max: 4 }).map((refuse) => ({ kind: 'cut' as const, refuse })),
  },
);

const pageArbitrary: fc.Arbitrary<PageSpec> = fc.record({
  faults: fc.array(
    fc.record({
      on: fc.constantFrom<Target>('any', 'any', 'any', 'event', 'event', 'terminal'),
      fault: faultArbitrary,
    }),
    { maxLength: 40, size: 'max' },
  ),
  clientFaults: fc.array(
    fc.record({
      on: fc.constantFrom<ClientTarget>('any', 'ack', 'ack', 'subscribe', 'ping'),
      fault: fc.oneof(
        { weight: 4, arbitrary: fc.constant({ kind: 'pass' as const }) },
        { weight: 3, arbitrary: fc.constant({ kind: 'drop' as const }) },
        { weight: 2, arbitrary: fc.constant({ kind: 'duplicate' as const }) },
        {
          weight: 2,
          arbitrary: fc.integer({ min: 1, max: 60 }).map((ms) => ({ kind: 'delay' as const, ms })),
        },
      ),
    }),
    { maxLength: 12, size: 'max' },
  ),
  reloads: fc.array(fc.integer({ min: 0, max: 500 }), { maxLength: 2, size: 'max' }),
});

const taskArbitrary: fc.Arbitrary<TaskSpec> = fc.record({
  driver: fc.constantFrom<TaskSpec['driver']>('batch', 'handle'),
  items: fc.array(fc.boolean(), { maxLength: 7, size: 'max' }),
  progressEvery: fc.integer({ min: 0, max: 3 }),
  end: fc.constantFrom<TerminalType>('completed', 'failed', 'cancelled', 'interrupted'),
  cancelAfter: fc.integer({ min: 0, max: 7 }),
  startDelayMs: fc.integer({ min: 0, max: 150 }),
  stepDelayMs: fc.integer({ min: 0, max: 15 }),
  knownTotal: fc.boolean(),
});

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** One watcher: a slot that holds successive pages (ProgressClients) sharing one cursor storage. */
class Watcher {
  readonly storage = new MemoryCursorStorage();
  readonly pages: { client: ProgressClient; logs: Map<string, WatchLog>; watches: Map<string, Watch> }[] = [];
  readonly restoredAhead: string[] = [];

  constructor(
    readonly proxy: FaultProxy,
    readonly httpUrl: string,
    readonly taskIds: readonly string[],
  ) {}

  open(): void {
    const client = new ProgressClient({
      url: this.proxy.url,
      httpUrl: this.httpUrl,
      httpFallback: httpFallback(),
      WebSocket,
      headers: { 'x-user': 'alice' },
      persistence: this.storage,
      connectTimeoutMs: 300,
      heartbeatMarginMs: 100,
      behindGraceMs: 50,
      finishTimeoutMs: 300,
      ackDelayMs: 20,
      reconnect: { initialDelayMs: 40, maxDelayMs: 150 },
      httpPollIntervalMs: 100,
    });
    client.on('error', () => undefined);
    const logs = new Map<string, WatchLog>();
    const watches = new Map<string, Watch>();
    for (const taskId of this.taskIds) {
      // A restored cursor may lag behind what earlier pages showed, never lead it.
      const shown = Math.max(0, ...this.pages.map((page) => page.logs.get(taskId)?.last ?? 0));
      const stored = this.storage.load(taskId) as { seq: number } | undefined;
      if (stored !== undefined && stored.seq > shown) {
        this.restoredAhead.push(`${taskId}: restored @${stored.seq}, earlier pages showed @${shown}`);
      }
      const watch = client.watch(taskId);
      const log = new WatchLog(watch, { failOnFatal: true });
      logs.set(taskId, log);
      watches.set(taskId, watch);
    }
    this.pages.push({ client, logs, watches });
  }

  /** A reload: the page's sockets die without a goodbye, then a new page opens on the same storage. */
  async reload(): Promise<void> {
    count('reload');
    const page = this.pages.at(-1);
    for (const connection of this.proxy.connections) connection.cut();
    await page?.client.close();
    this.open();
  }

  get current() {
    return this.pages.at(-1) as (typeof this.pages)[number];
  }

  allFinished(): boolean {
    return [...this.current.watches.values()].every((watch) => watch.getSnapshot().finished);
  }
}

/** Faults actually applied across all runs of a property: proof the schedules exercise every path. */
const applied = new Map<string, number>();
const count = (what: string) => applied.set(what, (applied.get(what) ?? 0) + 1);

/** The proxy's frame hook for a page: applies `faults` in order, each to the next frame it targets. */
function scheduled(faults: PageSpec['faults'], proxy: FaultProxy): FaultProxy['onServerFrame'] {
  let next = 0;
  return (frame) => {
    const entry = faults[next];
    if (entry === undefined) return 'pass';
    const event = frame.event as { type?: string } | undefined;
    const terminal = event?.type !== undefined && !['progress', 'item'].includes(event.type);
    const matches = entry.on === 'any' || (entry.on === 'event' && event !== undefined) || terminal;
    if (!matches) return 'pass';
    next++;
    if (entry.fault.kind !== 'pass')
      count(`${entry.fault.kind} ${terminal ? 'terminal' : String(frame.type)}`);
    return verdictOf(entry.fault, proxy);
  };
}

/** The proxy's client-frame hook for a page: applies `faults` in order, each to the next frame it targets. */
function scheduledClient(faults: PageSpec['clientFaults']): FaultProxy['onClientFrame'] {
  let next = 0;
  return (frame) => {
    const entry = faults[next];
    if (entry === undefined) return 'pass';
    if (entry.on !== 'any' && frame.type !== entry.on) return 'pass';
    next++;
    if (entry.fault.kind !== 'pass') count(`client-${entry.fault.kind} ${String(frame.type)}`);
    return entry.fault.kind === 'delay' ? { kind: 'delay', ms: entry.fault.ms } : entry.fault.kind;
  };
}

function verdictOf(fault: Fault, proxy: FaultProxy): FrameVerdict {
  switch (fault.kind) {
    case 'pass':
    case 'drop':
    case 'duplicate':
      return fault.kind;
    case 'delay':
      return { kind: 'delay', ms: fault.ms };
    case 'cut':
      proxy.refuseNext = fault.refuse;
      return 'cut';
    default: {
      const unknown: never = fault;
      throw new Error(`unknown fault ${JSON.stringify(unknown)}`);
    }
  }
}

async function drive(handle: TaskHandle, spec: TaskSpec): Promise<void> {
  await sleep(spec.startDelayMs);
  if (spec.driver === 'batch') {
    const controller = new AbortController();
    const cancel = spec.end === 'cancelled';
    await handle.runBatch(
      spec.items.map((fails, index) => ({ fails, index })),
      async ({ fails, index }) => {
        await sleep(spec.stepDelayMs);
        if (cancel && index + 1 >= spec.cancelAfter) controller.abort('stop');
        if (fails) throw new Error(`item ${index} failed`);
      },
      { key: ({ index }) => `node-${index}`, signal: controller.signal },
    );
    return;
  }
  for (const [index, fails] of spec.items.entries()) {
    await sleep(spec.stepDelayMs);
    if (spec.progressEvery > 0 && index % spec.progressEvery === 0) {
      await handle.progress({ current: `node-${index}`, message: `working on node-${index}` });
    }
    await handle.item({ key: `node-${index}`, ok: !fails, ...(fails ? { error: 'taint refused' } : {}) });
  }
  await sleep(spec.stepDelayMs);
  switch (spec.end) {
    case 'completed':
      await handle.complete({ result: { nodes: spec.items.length } });
      break;
    case 'failed':
      await handle.fail('the batch failed');
      break;
    case 'cancelled':
      await handle.cancel('cancelled by the operator');
      break;
    case 'interrupted':
      await handle.interrupt('worker went away');
      break;
    default: {
      const unknown: never = spec.end;
      throw new Error(`unknown end ${String(unknown)}`);
    }
  }
}

/** Bound of the healing phase: the network is fault-free by then, so this is only a hang guard. */
const HEAL_MS = 8000;

const trace = (message: string) => {
  if (process.env.E2E_TRACE) process.stderr.write(`${new Date().toISOString()} ${message}\n`);
};

async function runSchedule(
  makeStore: () => ProgressStore,
  specs: TaskSpec[],
  pageSpecs: PageSpec[],
): Promise<void> {
  const store = makeStore();
  const server = await ProgressServer.listen(
    {
      store,
      authenticate: users,
      heartbeatIntervalMs: 100,
      terminalRetry: { initialDelayMs: 20, maxDelayMs: 100 },
    },
    { port: 0, host: '127.0.0.1' },
  );
  const proxies: FaultProxy[] = [];
  const watchers: Watcher[] = [];
  const timers: NodeJS.Timeout[] = [];
  try {
    const { port } = (server.httpServer as Server).address() as AddressInfo;
    const handles: TaskHandle[] = [];
    for (const spec of specs) {
      const total = spec.knownTotal ? spec.items.length : null;
      handles.push(await server.tasks.create({ owner: 'alice', kind: 'batch_taint', total }));
    }
    const taskIds = handles.map((handle) => handle.id);
    for (const pageSpec of pageSpecs) {
      const proxy = await FaultProxy.start(`ws://127.0.0.1:${port}/progress`);
      proxy.onServerFrame = scheduled(pageSpec.faults, proxy);
      proxy.onClientFrame = scheduledClient(pageSpec.clientFaults);
      proxies.push(proxy);
      const watcher = new Watcher(proxy, `http://127.0.0.1:${port}/progress`, taskIds);
      watcher.open();
      watchers.push(watcher);
    }

    const reloads: Promise<void>[] = [];
    for (const [index, pageSpec] of pageSpecs.entries()) {
      const watcher = watchers[index] as Watcher;
      for (const at of pageSpec.reloads) {
        reloads.push(
          new Promise<void>((resolve, reject) => {
            timers.push(setTimeout(() => watcher.reload().then(resolve, reject), at));
          }),
        );
      }
    }
    trace(`run: ${specs.length} tasks, ${pageSpecs.length} pages`);
    await Promise.all(handles.map((handle, index) => drive(handle, specs[index] as TaskSpec)));
    trace('driven');
    await Promise.all(reloads);
    trace('reloaded');

    const deadline = Date.now() + HEAL_MS;
    while (!watchers.every((watcher) => watcher.allFinished()) && Date.now() < deadline) await sleep(10);

    trace('healed');
    for (const proxy of proxies) for (let i = 0; i < proxy.refused; i++) count('refused');
    const rows = new Map<string, Task>();
    for (const id of taskIds) rows.set(id, (await store.getTask(id)) as Task);
    for (const [w, watcher] of watchers.entries()) {
      for (const [p, page] of watcher.pages.entries()) {
        for (const [taskId, log] of page.logs) {
          const where = `watcher ${w} page ${p} task ${taskId}`;
          expect(log.problems, where).toEqual([]);
          expect(log.terminals.length, where).toBeLessThanOrEqual(1);
          expect(log.finished, where).toBe(log.terminals.length);
        }
      }
      expect(watcher.restoredAhead).toEqual([]);
      for (const [taskId, watch] of watcher.current.watches) {
        const row = rows.get(taskId) as Task;
        const where = `watcher ${w} (page ${watcher.pages.length - 1}) task ${taskId}`;
        expect(row.status, where).not.toBe('running');
        expect(watcher.current.logs.get(taskId)?.terminals, where).toEqual([`${row.status}@${row.seq}`]);
        expect(watch.getSnapshot(), where).toMatchObject({
          finished: true,
          status: row.status,
          seq: row.seq,
          progress: { total: row.total, done: row.done, succeeded: row.succeeded, failed: row.failed },
        });
      }
      // The client never provoked an error frame (an ack beyond what was sent, a bad subscribe…).
      for (const connection of watcher.proxy.connections) {
        const errors = connection.fromServer
          .map((text) => JSON.parse(text))
          .filter((frame) => frame.type === 'error');
        const about = new Set(errors.map((frame) => frame.taskId));
        const story = () =>
          [
            ...connection.fromClient.map((text) => `> ${text}`),
            ...connection.fromServer.map((text) => `< ${text.slice(0, 160)}`),
          ]
            .filter((line) => [...about].some((taskId) => line.includes(taskId)))
            .join('\n');
        expect(
          errors,
          `watcher ${w} connection ${connection.number}:\n${errors.length > 0 ? story() : ''}`,
        ).toEqual([]);
      }
    }
  } finally {
    trace('closing');
    for (const timer of timers) clearTimeout(timer);
    for (const watcher of watchers) for (const page of watcher.pages) await page.client.close();
    for (const proxy of proxies) await proxy.close();
    await server.close({ timeoutMs: 1000 });
    await store.close();
    trace('closed');
  }
}

// Shrinking is off (`endOnFailure`): every shrink step is a real-time run, and a counterexample is
// replayed exactly enough from its seed and path, which fast-check prints.
const scheduleArbitrary = fc.tuple(
  fc.array(taskArbitrary, { minLength: 3, maxLength: 8, size: 'max' }),
  fc.array(pageArbitrary, { minLength: 2, maxLength: 3, size: 'max' }),
);

/** Every kind of fault happened at least once over the runs (else the property proves little). */
function expectEveryFault(): void {
  const kinds = [...applied.keys()].map((key) => key.split(' ')[0]);
  for (const kind of ['drop', 'duplicate', 'delay', 'cut', 'refused', 'reload', 'client-delay']) {
    expect(kinds, `no ${kind} in ${JSON.stringify([...applied])}`).toContain(kind);
  }
  for (const key of [
    'drop terminal',
    'drop event',
    'duplicate terminal',
    'client-drop ack',
    'client-drop subscribe',
    'client-duplicate ack',
  ]) {
    expect([...applied.keys()], `no ${key} in ${JSON.stringify([...applied])}`).toContain(key);
  }
  trace(JSON.stringify([...applied]));
  applied.clear();
}

describe('random fault schedules through the real server and a fault-injecting proxy', () => {
  it(
    `memory store, ${propertyRuns(25)} runs: every page sees a gap-free sequence and ends in the terminal state exactly once`,
    async () => {
      await fc.assert(
        fc.asyncProperty(scheduleArbitrary, ([specs, pages]) =>
          runSchedule(() => new MemoryProgressStore(), specs, pages),
        ),
        { ...propertyParams(25), endOnFailure: true },
      );
      expectEveryFault();
    },
    propertyTimeoutMs(25, 240_000),
  );

  it(
    `SQLite store, ${propertyRuns(10)} runs: the same guarantees with the store the benchmark uses`,
    async () => {
      await fc.assert(
        fc.asyncProperty(scheduleArbitrary, ([specs, pages]) =>
          runSchedule(
            () => new SqliteProgressStore({ database: ':memory:', dataVersionPollMs: 0 }),
            specs,
            pages,
          ),
        ),
        { ...propertyParams(10), endOnFailure: true },
      );
      expectEveryFault();
    },
    propertyTimeoutMs(10, 120_000),
  );
});
