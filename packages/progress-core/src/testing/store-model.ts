import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../codes.js';
import type { Task, TaskEvent, TaskStatus } from '../model.js';
import { isTerminalEvent, progressOf, TERMINAL_TYPES } from '../model.js';
import type { AppendInput, CreateTaskInput } from '../store/inputs.js';
import type { ProgressStore } from '../store/progress-store.js';
import { STORE_DEFAULTS } from '../store/progress-store.js';
import type { AppendResult } from '../store/task-transitions.js';
import { leaseExpiredReason, newTask } from '../store/task-transitions.js';
import type { ManualClock } from './manual-clock.js';
import { propertyParams, propertyRuns, propertyTimeoutMs } from './property-config.js';
import { TERMINAL_INPUTS } from './store-contract-events.js';
import type { ProgressStoreHarnessFactory } from './store-contract-support.js';
import { expectRejected, expectRejection, fulfilled, range, seqsOf, show } from './store-contract-support.js';

/**
 * Store contract: the model-based test, random command sequences checked against a simple model.
 *
 * @module
 */

/**
 * The model-based test of the store contract (design guarantee 3 and the log invariants behind 1 and 2):
 * random sequences of creates, appends, concurrent bursts, acks, lease renewals, clock jumps, reaps and
 * purges, each checked against a model simple enough to be obviously right. After every command the
 * store must agree with the model on every task's snapshot, and the log of every task the command
 * touched must be 1..n with no gap, hold at most one terminal event (last), and fold to the snapshot.
 */

const MODEL_OWNER = 'model-owner';
const MAX_TASKS = 6;
const WORKERS = ['worker-1', 'worker-2'] as const;
const TTLS = [500, 1000, 2000] as const;
/** Generous: a real database may need a few milliseconds per command. Never reached by a healthy store. */
const MODEL_TIMEOUT_MS = 300_000;

/** What the model knows of a task: the fields a store must agree on. */
interface ModelTask {
  id: string;
  status: TaskStatus;
  seq: number;
  total: number | null;
  done: number;
  succeeded: number;
  failed: number;
  ackedSeq: number;
  leaseOwner: string | null;
  leaseExpiresAt: number | null;
  createdAt: number;
  finishedAt: number | null;
  purged: boolean;
}

/** The model: every task created so far, purged ones included (they must stay gone). */
interface StoreModel {
  tasks: ModelTask[];
}

/** The system under test. */
interface ModelReal {
  store: ProgressStore;
  clock: ManualClock;
}

type StoreCommand = fc.AsyncCommand<StoreModel, ModelReal>;

function pick(model: Readonly<StoreModel>, index: number): ModelTask {
  const task = model.tasks[index % model.tasks.length];
  if (task === undefined)
    throw new Error('the model has no task to pick (check() should have prevented this)');
  return task;
}

/** The error an append (or lease change) to `task` must fail with, if any. */
function finishedOrGone(task: ModelTask): ErrorCode | undefined {
  if (task.purged) return ErrorCode.TaskNotFound;
  if (task.status !== 'running') return ErrorCode.TaskFinished;
  return undefined;
}

/** The model's own fold of one successful append. */
function applyToModel(task: ModelTask, input: AppendInput, now: number): void {
  task.seq += 1;
  switch (input.type) {
    case 'progress':
      if (input.total !== undefined) task.total = input.total;
      if (input.done !== undefined) task.done = input.done;
      break;
    case 'item':
      task.done += 1;
      if (input.ok) task.succeeded += 1;
      else task.failed += 1;
      break;
    case 'completed':
    case 'failed':
    case 'cancelled':
    case 'interrupted':
      task.status = input.type;
      task.finishedAt = now;
      task.leaseOwner = null;
      task.leaseExpiresAt = null;
      break;
    default: {
      const unreachable: never = input;
      throw new Error(`unknown input ${show(unreachable)}`);
    }
  }
}

/** The fields the model tracks, picked from a model task or a store row alike. */
type SnapshotFields = Omit<ModelTask, 'id' | 'purged'>;

function snapshotOf(task: SnapshotFields): SnapshotFields {
  return {
    status: task.status,
    seq: task.seq,
    total: task.total,
    done: task.done,
    succeeded: task.succeeded,
    failed: task.failed,
    ackedSeq: task.ackedSeq,
    leaseOwner: task.leaseOwner,
    leaseExpiresAt: task.leaseExpiresAt,
    createdAt: task.createdAt,
    finishedAt: task.finishedAt,
  };
}

/** The log invariants, checked against the task's own snapshot. */
function checkLog(label: string, task: Task, log: readonly TaskEvent[]): void {
  const where = `${label}: log of ${task.id}`;
  expect(seqsOf(log), `${where}: seqs must be 1..${task.seq} with no gap`).toEqual(range(1, task.seq));
  expect(
    log.every((event) => event.taskId === task.id),
    `${where}: every event carries the task id`,
  ).toBe(true);
  const terminals = log.filter((event) => isTerminalEvent(event));
  if (task.status === 'running') {
    expect(terminals.length, `${where}: a running task has no terminal event`).toBe(0);
  } else {
    expect(terminals.length, `${where}: an ended task has exactly one terminal event`).toBe(1);
    expect(log.at(-1)?.type, `${where}: the terminal event is last and matches the status`).toBe(task.status);
  }
  let previous = { done: 0, succeeded: 0, failed: 0 };
  for (const event of log) {
    const { done, succeeded, failed } = event.progress;
    const at = `${where}, event ${event.seq} (${event.type})`;
    switch (event.type) {
      case 'item':
        expect({ done, succeeded, failed }, `${at}: an item counts one finished item`).toEqual({
          done: previous.done + 1,
          succeeded: previous.succeeded + (event.item.ok ? 1 : 0),
          failed: previous.failed + (event.item.ok ? 0 : 1),
        });
        break;
      case 'progress':
        expect({ succeeded, failed }, `${at}: progress keeps the item counters`).toEqual({
          succeeded: previous.succeeded,
          failed: previous.failed,
        });
        break;
      default:
        expect({ done, succeeded, failed }, `${at}: a terminal event keeps the counters`).toEqual(previous);
    }
    previous = { done, succeeded, failed };
  }
  const last = log.at(-1);
  if (last !== undefined) {
    expect(progressOf(task), `${where}: the snapshot's progress is the last event's`).toEqual(last.progress);
  } else {
    expect([task.done, task.succeeded, task.failed], `${where}: counters of a task without events`).toEqual([
      0, 0, 0,
    ]);
  }
}

/**
 * Compares the store with the model: every snapshot (one `listTasks` call), every latest seq (one
 * `latestSeqs` call), and the full log of each task in `touched`.
 */
async function verify(
  label: string,
  model: StoreModel,
  real: ModelReal,
  touched: readonly ModelTask[],
): Promise<void> {
  const live = model.tasks.filter((task) => !task.purged);
  const listed = await real.store.listTasks({ owner: MODEL_OWNER, limit: STORE_DEFAULTS.maxListLimit });
  expect(listed.map((task) => task.id).sort(), `${label}: the tasks that exist`).toEqual(
    live.map((task) => task.id).sort(),
  );
  const byId = new Map(listed.map((task) => [task.id, task]));
  for (const expected of live) {
    const actual = byId.get(expected.id);
    if (actual === undefined) continue; // reported above
    expect(snapshotOf(actual), `${label}: snapshot of ${expected.id}`).toEqual(snapshotOf(expected));
  }
  const seqs = await real.store.latestSeqs(model.tasks.map((task) => task.id));
  expect(Object.fromEntries(seqs), `${label}: latestSeqs`).toEqual(
    Object.fromEntries(live.map((task) => [task.id, task.seq])),
  );
  for (const task of touched) {
    if (task.purged) {
      await expectRejection(`${label}: readEvents of purged ${task.id}`, ErrorCode.TaskNotFound, () =>
        real.store.readEvents(task.id, 0),
      );
      continue;
    }
    const actual = byId.get(task.id);
    if (actual !== undefined)
      checkLog(label, actual, await real.store.readEvents(task.id, 0, STORE_DEFAULTS.maxReadLimit));
  }
}

/** Checks one successful append against the model and folds it in. */
function acceptAppend(
  label: string,
  task: ModelTask,
  input: AppendInput,
  result: AppendResult,
  now: number,
): void {
  expect(
    { taskId: result.event.taskId, seq: result.event.seq, type: result.event.type, time: result.event.time },
    `${label}: the appended event`,
  ).toEqual({ taskId: task.id, seq: task.seq + 1, type: input.type, time: now });
  expect(result.task.seq, `${label}: the returned snapshot's seq`).toBe(result.event.seq);
  applyToModel(task, input, now);
  expect(snapshotOf(result.task), `${label}: the returned snapshot`).toEqual(snapshotOf(task));
}

class CreateTaskCommand implements StoreCommand {
  constructor(
    readonly total: number | null,
    readonly lease: { owner: string; ttlMs: number } | null,
  ) {}
  check(model: Readonly<StoreModel>): boolean {
    return model.tasks.length < MAX_TASKS;
  }
  async run(model: StoreModel, real: ModelReal): Promise<void> {
    const id = `m-${model.tasks.length}`;
    const input: CreateTaskInput & { id: string } = {
      id,
      owner: MODEL_OWNER,
      kind: 'model',
      total: this.total,
    };
    if (this.lease !== null) input.lease = { ...this.lease };
    const now = real.clock.now();
    const created = await real.store.createTask(input);
    expect(created, `${this}: the created row`).toEqual(newTask(input, now));
    const task: ModelTask = {
      id,
      status: 'running',
      seq: 0,
      total: this.total,
      done: 0,
      succeeded: 0,
      failed: 0,
      ackedSeq: 0,
      leaseOwner: this.lease?.owner ?? null,
      leaseExpiresAt: this.lease === null ? null : now + this.lease.ttlMs,
      createdAt: now,
      finishedAt: null,
      purged: false,
    };
    model.tasks.push(task);
    await verify(this.toString(), model, real, [task]);
  }
  toString(): string {
    return `createTask(total ${this.total}, lease ${this.lease === null ? 'none' : `${this.lease.owner}/${this.lease.ttlMs}ms`})`;
  }
}

class AppendCommand implements StoreCommand {
  constructor(
    readonly index: number,
    readonly input: AppendInput,
  ) {}
  check(model: Readonly<StoreModel>): boolean {
    return model.tasks.length > 0;
  }
  async run(model: StoreModel, real: ModelReal): Promise<void> {
    const task = pick(model, this.index);
    const label = `${this} on ${task.id}`;
    const failure = finishedOrGone(task);
    const now = real.clock.now();
    if (failure !== undefined) {
      await expectRejection(label, failure, () => real.store.append(task.id, this.input));
    } else {
      acceptAppend(label, task, this.input, await real.store.append(task.id, this.input), now);
    }
    await verify(label, model, real, [task]);
  }
  toString(): string {
    return `append(#${this.index}, ${show(this.input)})`;
  }
}

class BurstCommand implements StoreCommand {
  constructor(
    readonly index: number,
    readonly inputs: readonly AppendInput[],
  ) {}
  check(model: Readonly<StoreModel>): boolean {
    return model.tasks.length > 0;
  }
  async run(model: StoreModel, real: ModelReal): Promise<void> {
    const task = pick(model, this.index);
    const label = `${this} on ${task.id}`;
    const failure = finishedOrGone(task);
    const now = real.clock.now();
    const settled = await Promise.allSettled(this.inputs.map((input) => real.store.append(task.id, input)));
    if (failure !== undefined) {
      settled.forEach((result, i) => {
        expectRejected(`${label}: append #${i}`, failure, result);
      });
      await verify(label, model, real, [task]);
      return;
    }
    const accepted: { input: AppendInput; result: AppendResult }[] = [];
    settled.forEach((result, i) => {
      const input = this.inputs[i] as AppendInput;
      const what = `${label}: append #${i} (${input.type})`;
      // Only a terminal event in the same burst can make an append fail, and never the terminal one.
      if (
        result.status === 'rejected' &&
        this.inputs.some((other) => TERMINAL_TYPES.includes(other.type as never))
      ) {
        if (!TERMINAL_TYPES.includes(input.type as never)) {
          expectRejected(what, ErrorCode.TaskFinished, result);
          return;
        }
      }
      accepted.push({ input, result: fulfilled(what, result) });
    });
    accepted.sort((a, b) => a.result.event.seq - b.result.event.seq);
    expect(
      accepted.map(({ result }) => result.event.seq),
      `${label}: seqs of the accepted appends must follow ${task.seq} with no gap or duplicate`,
    ).toEqual(range(task.seq + 1, task.seq + accepted.length));
    const terminalAt = accepted.findIndex(({ input }) => TERMINAL_TYPES.includes(input.type as never));
    if (terminalAt !== -1) {
      expect(terminalAt, `${label}: the terminal event must be the last one accepted`).toBe(
        accepted.length - 1,
      );
    }
    for (const { input, result } of accepted) {
      const what = `${label}: ${input.type} at seq ${result.event.seq}`;
      expect(
        { taskId: result.event.taskId, type: result.event.type, time: result.event.time },
        `${what}: the event`,
      ).toEqual({ taskId: task.id, type: input.type, time: now });
      applyToModel(task, input, now);
    }
    await verify(label, model, real, [task]);
  }
  toString(): string {
    return `burst(#${this.index}, [${this.inputs.map((input) => input.type).join(', ')}])`;
  }
}

class AckCommand implements StoreCommand {
  constructor(
    readonly index: number,
    readonly seqPick: number,
  ) {}
  check(model: Readonly<StoreModel>): boolean {
    return model.tasks.length > 0;
  }
  async run(model: StoreModel, real: ModelReal): Promise<void> {
    const task = pick(model, this.index);
    // One past the task's seq now and then, which must be refused.
    const seq = this.seqPick % (task.seq + 2);
    const label = `${this} on ${task.id} (seq ${seq} of ${task.seq})`;
    if (task.purged) {
      await expectRejection(label, ErrorCode.TaskNotFound, () => real.store.ack(task.id, seq));
    } else if (seq > task.seq) {
      await expectRejection(label, ErrorCode.InvalidInput, () => real.store.ack(task.id, seq));
    } else {
      const expected = Math.max(task.ackedSeq, seq);
      expect(await real.store.ack(task.id, seq), `${label}: the returned ackedSeq`).toBe(expected);
      task.ackedSeq = expected;
    }
    await verify(label, model, real, []);
  }
  toString(): string {
    return `ack(#${this.index}, pick ${this.seqPick})`;
  }
}

class RenewLeaseCommand implements StoreCommand {
  constructor(
    readonly index: number,
    readonly owner: string,
    readonly ttlMs: number,
  ) {}
  check(model: Readonly<StoreModel>): boolean {
    return model.tasks.length > 0;
  }
  async run(model: StoreModel, real: ModelReal): Promise<void> {
    const task = pick(model, this.index);
    const label = `${this} on ${task.id}`;
    const now = real.clock.now();
    const held =
      task.leaseOwner !== null &&
      task.leaseOwner !== this.owner &&
      task.leaseExpiresAt !== null &&
      task.leaseExpiresAt > now;
    const failure = finishedOrGone(task) ?? (held ? ErrorCode.LeaseHeld : undefined);
    if (failure !== undefined) {
      await expectRejection(label, failure, () => real.store.renewLease(task.id, this.owner, this.ttlMs));
    } else {
      const renewed = await real.store.renewLease(task.id, this.owner, this.ttlMs);
      task.leaseOwner = this.owner;
      task.leaseExpiresAt = now + this.ttlMs;
      expect(snapshotOf(renewed), `${label}: the returned row`).toEqual(snapshotOf(task));
    }
    await verify(label, model, real, []);
  }
  toString(): string {
    return `renewLease(#${this.index}, ${this.owner}, ${this.ttlMs}ms)`;
  }
}

class ReleaseLeaseCommand implements StoreCommand {
  constructor(
    readonly index: number,
    readonly owner: string,
  ) {}
  check(model: Readonly<StoreModel>): boolean {
    return model.tasks.length > 0;
  }
  async run(model: StoreModel, real: ModelReal): Promise<void> {
    const task = pick(model, this.index);
    const label = `${this} on ${task.id}`;
    if (task.purged) {
      await expectRejection(label, ErrorCode.TaskNotFound, () =>
        real.store.releaseLease(task.id, this.owner),
      );
    } else {
      await real.store.releaseLease(task.id, this.owner);
      if (task.status === 'running' && task.leaseOwner === this.owner) {
        task.leaseOwner = null;
        task.leaseExpiresAt = null;
      }
    }
    await verify(label, model, real, []);
  }
  toString(): string {
    return `releaseLease(#${this.index}, ${this.owner})`;
  }
}

class AdvanceClockCommand implements StoreCommand {
  constructor(readonly ms: number) {}
  check(): boolean {
    return true;
  }
  async run(model: StoreModel, real: ModelReal): Promise<void> {
    real.clock.advance(this.ms);
    await verify(this.toString(), model, real, []);
  }
  toString(): string {
    return `advanceClock(${this.ms}ms)`;
  }
}

/**
 * Checks that `chosen` is a valid batch of `eligible` ordered by `key` ascending: the right size, and no
 * eligible task left out has a smaller key than one chosen (ties may go either way).
 */
function checkOldestFirst(
  label: string,
  chosen: readonly ModelTask[],
  eligible: readonly ModelTask[],
  options: { limit: number; key: (task: ModelTask) => number },
): void {
  expect(chosen.length, `${label}: how many`).toBe(Math.min(options.limit, eligible.length));
  const chosenIds = new Set(chosen.map((task) => task.id));
  expect(chosenIds.size, `${label}: each task at most once`).toBe(chosen.length);
  const left = eligible.filter((task) => !chosenIds.has(task.id));
  const newestChosen = Math.max(...chosen.map(options.key));
  for (const task of left) {
    expect(
      options.key(task),
      `${label}: ${task.id} is older than a task chosen before it`,
    ).toBeGreaterThanOrEqual(newestChosen);
  }
}

class ReapCommand implements StoreCommand {
  constructor(
    readonly limit: number | undefined,
    readonly concurrent: boolean,
  ) {}

  check(): boolean {
    return true;
  }
  async run(model: StoreModel, real: ModelReal): Promise<void> {
    const label = this.toString();
    const now = real.clock.now();
    const eligible = model.tasks.filter(
      (task) =>
        !task.purged &&
        task.status === 'running' &&
        task.leaseExpiresAt !== null &&
        task.leaseExpiresAt <= now,
    );
    // Two concurrent reapers use the default limit (above MAX_TASKS): together they must reap every
    // expired lease exactly once, however the store splits the work between them.
    const options = this.limit === undefined || this.concurrent ? undefined : { limit: this.limit };
    const results = this.concurrent
      ? (await Promise.all([real.store.reapExpiredLeases(), real.store.reapExpiredLeases()])).flat()
      : await real.store.reapExpiredLeases(options);
    const byId = new Map(model.tasks.map((task) => [task.id, task]));
    const reaped = results.map((result) => {
      const task = byId.get(result.event.taskId);
      if (task === undefined || !eligible.includes(task)) {
        throw new Error(
          `${label}: reaped ${result.event.taskId}, whose lease had not expired (eligible: ${show(eligible.map((t) => t.id))})`,
        );
      }
      return task;
    });
    const limit = options?.limit ?? STORE_DEFAULTS.reapLimit;
    checkOldestFirst(label, reaped, eligible, { limit, key: (task) => task.leaseExpiresAt ?? 0 });
    results.forEach((result, i) => {
      const task = reaped[i] as ModelTask;
      const reason = leaseExpiredReason({ leaseOwner: task.leaseOwner });
      expect(result.event, `${label}: the interrupted event of ${task.id}`).toMatchObject({
        type: 'interrupted',
        reason,
      });
      acceptAppend(`${label}: ${task.id}`, task, { type: 'interrupted', reason }, result, now);
    });
    await verify(label, model, real, reaped);
  }
  toString(): string {
    if (this.concurrent) return 'reapExpiredLeases() twice concurrently';
    return `reapExpiredLeases(limit ${this.limit ?? 'default'})`;
  }
}

class PurgeCommand implements StoreCommand {
  constructor(
    readonly olderThanMs: number,
    readonly limit: number | undefined,
  ) {}
  check(): boolean {
    return true;
  }
  async run(model: StoreModel, real: ModelReal): Promise<void> {
    const label = this.toString();
    const cutoff = real.clock.now() - this.olderThanMs;
    const eligible = model.tasks.filter(
      (task) =>
        !task.purged && task.status !== 'running' && task.finishedAt !== null && task.finishedAt <= cutoff,
    );
    const options =
      this.limit === undefined
        ? { olderThanMs: this.olderThanMs }
        : { olderThanMs: this.olderThanMs, limit: this.limit };
    const count = await real.store.purgeFinished(options);
    const remaining = await real.store.latestSeqs(model.tasks.map((task) => task.id));
    const gone = model.tasks.filter((task) => !task.purged && !remaining.has(task.id));
    for (const task of gone) {
      expect(
        eligible.includes(task),
        `${label}: purged ${task.id} (${task.status}, finished ${task.finishedAt})`,
      ).toBe(true);
    }
    expect(count, `${label}: the count returned`).toBe(gone.length);
    checkOldestFirst(label, gone, eligible, {
      limit: this.limit ?? STORE_DEFAULTS.purgeLimit,
      key: (task) => task.finishedAt ?? 0,
    });
    for (const task of gone) task.purged = true;
    await verify(label, model, real, gone);
  }
  toString(): string {
    return `purgeFinished(olderThanMs ${this.olderThanMs}, limit ${this.limit ?? 'default'})`;
  }
}

function commandArbitraries(maxBurst: number): fc.Arbitrary<StoreCommand>[] {
  const index = fc.nat({ max: 63 });
  const worker = fc.constantFrom(...WORKERS);
  const ttl = fc.constantFrom(...TTLS);
  const progress = fc.record(
    {
      type: fc.constant('progress' as const),
      done: fc.nat({ max: 20 }),
      total: fc.option(fc.nat({ max: 20 }), { nil: null }),
      message: fc.constantFrom('working', null),
    },
    { requiredKeys: ['type'] },
  );
  const item = fc.record({
    type: fc.constant('item' as const),
    key: fc.constantFrom('node-1', 'node-2', 'node-3'),
    ok: fc.boolean(),
  });
  const terminal = fc.constantFrom(...TERMINAL_TYPES).map((type) => TERMINAL_INPUTS[type]);
  // Progress in a burst sets no absolute counter, so the outcome does not depend on commit order.
  const burstProgress = fc.constant<AppendInput>({ type: 'progress', message: 'burst' });
  const burst = fc
    .tuple(
      index,
      fc.array(fc.oneof(item, burstProgress), { minLength: 2, maxLength: maxBurst }),
      // One burst in five carries a terminal event; more would end most tasks before anything else happens.
      fc.oneof(
        { arbitrary: fc.constant(null), weight: 4 },
        { arbitrary: fc.tuple(terminal, fc.nat()), weight: 1 },
      ),
    )
    .map(([at, inputs, ending]) => {
      const all: AppendInput[] = [...inputs];
      if (ending !== null) all.splice(ending[1] % all.length, 1, ending[0]);
      return new BurstCommand(at, all);
    });
  const limit = fc.option(fc.integer({ min: 1, max: 3 }), { nil: undefined });
  const create = fc
    .tuple(
      fc.option(fc.nat({ max: 10 }), { nil: null }),
      fc.option(fc.record({ owner: worker, ttlMs: ttl }), { nil: null }),
    )
    .map(([total, lease]) => new CreateTaskCommand(total, lease));
  const append = fc.tuple(index, fc.oneof(progress, item)).map(([at, input]) => new AppendCommand(at, input));
  const advance = fc
    .oneof(fc.constantFrom(1, 500, 1000, 2000), fc.integer({ min: 0, max: 2500 }))
    .map((ms) => new AdvanceClockCommand(ms));
  // fc.commands picks uniformly among these; listing one twice doubles its weight.
  return [
    create,
    create,
    append,
    append,
    fc.tuple(index, terminal).map(([at, input]) => new AppendCommand(at, input)),
    burst,
    fc.tuple(index, fc.nat({ max: 64 })).map(([at, seq]) => new AckCommand(at, seq)),
    fc.tuple(index, worker, ttl).map(([at, owner, ttlMs]) => new RenewLeaseCommand(at, owner, ttlMs)),
    fc.tuple(index, worker).map(([at, owner]) => new ReleaseLeaseCommand(at, owner)),
    advance,
    advance,
    fc.tuple(limit, fc.boolean()).map(([max, concurrent]) => new ReapCommand(max, concurrent)),
    fc
      .tuple(fc.constantFrom(0, 500, 2000), limit)
      .map(([olderThanMs, max]) => new PurgeCommand(olderThanMs, max)),
  ];
}

/** Declares the model-based test; each run builds (and closes) a fresh harness. */
export function describeModelContract(
  harness: ProgressStoreHarnessFactory,
  options: { readonly numRuns: number; readonly concurrency: number },
): void {
  describe('model-based', () => {
    it(
      `random command sequences agree with the model after every command (${propertyRuns(options.numRuns)} runs)`,
      async () => {
        const commands = fc.commands(commandArbitraries(Math.min(options.concurrency, 10)), {
          maxCommands: 40,
          size: 'max',
        });
        await fc.assert(
          fc.asyncProperty(commands, async (sequence) => {
            const current = await harness();
            try {
              await fc.asyncModelRun(() => ({ model: { tasks: [] }, real: current }), sequence);
            } finally {
              await current.close();
            }
          }),
          propertyParams(options.numRuns),
        );
      },
      propertyTimeoutMs(options.numRuns, MODEL_TIMEOUT_MS),
    );
  });
}
