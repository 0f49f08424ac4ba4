import type fc from 'fast-check';
import { expect } from 'vitest';
import { ErrorCode } from '../codes.js';
import type { Task, TaskEvent, TaskStatus } from '../model.js';
import { isTerminalEvent, progressOf } from '../model.js';
import type { AppendInput } from '../store/inputs.js';
import type { ProgressStore } from '../store/progress-store.js';
import { STORE_DEFAULTS } from '../store/progress-store.js';
import type { AppendResult } from '../store/task-transitions.js';
import type { ManualClock } from './manual-clock.js';
import { expectRejection, range, seqsOf, show } from './store-contract-support.js';

/**
 * Store contract, model-based test: the model (what a store must agree on, task by task), the model's own
 * fold of an append, and the checks run after every command — the snapshot comparison, the log
 * invariants and the oldest-first rule of batched reaps and purges. The commands that drive it are in
 * `store-model-commands.ts`, the generators and the `describe` wiring in `store-model.ts`.
 *
 * @module
 */

/** The owner of every task the model creates, so `listTasks` sees exactly the model's tasks. */
export const MODEL_OWNER = 'model-owner';
/** Creates stop at this many tasks, so later commands keep hitting tasks that already have a history. */
export const MAX_TASKS = 6;

/** What the model knows of a task: the fields a store must agree on. */
export interface ModelTask {
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
export interface StoreModel {
  tasks: ModelTask[];
}

/** The system under test. */
export interface ModelReal {
  store: ProgressStore;
  clock: ManualClock;
}

/** One command of the model-based test. */
export type StoreCommand = fc.AsyncCommand<StoreModel, ModelReal>;

/** The task a command's random index lands on (the model holds at least one when this is called). */
export function pick(model: Readonly<StoreModel>, index: number): ModelTask {
  const task = model.tasks[index % model.tasks.length];
  if (task === undefined)
    throw new Error('the model has no task to pick (check() should have prevented this)');
  return task;
}

/** The error an append (or lease change) to `task` must fail with, if any. */
export function finishedOrGone(task: ModelTask): ErrorCode | undefined {
  if (task.purged) return ErrorCode.TaskNotFound;
  if (task.status !== 'running') return ErrorCode.TaskFinished;
  return undefined;
}

/** The model's own fold of one successful append. */
export function applyToModel(task: ModelTask, input: AppendInput, now: number): void {
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

export function snapshotOf(task: SnapshotFields): SnapshotFields {
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
export async function verify(
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
export function acceptAppend(
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

/**
 * Checks that `chosen` is a valid batch of `eligible` ordered by `key` ascending: the right size, and no
 * eligible task left out has a smaller key than one chosen (ties may go either way).
 */
export function checkOldestFirst(
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
