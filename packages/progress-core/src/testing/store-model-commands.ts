import { expect } from 'vitest';
import { ErrorCode } from '../codes.js';
import { TERMINAL_TYPES } from '../model.js';
import type { AppendInput, CreateTaskInput } from '../store/inputs.js';
import { STORE_DEFAULTS } from '../store/progress-store.js';
import type { AppendResult } from '../store/task-transitions.js';
import { expectRejected, expectRejection, fulfilled, range, show } from './store-contract-support.js';
import type { ModelReal, ModelTask, StoreCommand, StoreModel } from './store-model-state.js';
import {
  acceptAppend,
  applyToModel,
  checkOldestFirst,
  finishedOrGone,
  MAX_TASKS,
  MODEL_OWNER,
  pick,
  snapshotOf,
  verify,
} from './store-model-state.js';

/**
 * Store contract, model-based test: the commands. Each runs one store operation (or a concurrent burst
 * of them), checks the outcome against the model, folds it into the model, and then has the whole store
 * verified against the model (`verify` in `store-model-state.ts`).
 *
 * @module
 */

export class CreateTaskCommand implements StoreCommand {
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
    const leaseOwner = this.lease?.owner ?? null;
    const leaseExpiresAt = this.lease === null ? null : now + this.lease.ttlMs;
    // Spelled out, not the stores' own `newTask`: a model that shares the code it checks cannot fail.
    expect(created, `${this}: the created row`).toEqual({
      id,
      owner: MODEL_OWNER,
      kind: 'model',
      status: 'running',
      total: this.total,
      done: 0,
      succeeded: 0,
      failed: 0,
      current: null,
      message: null,
      result: null,
      error: null,
      seq: 0,
      ackedSeq: 0,
      createdAt: now,
      updatedAt: now,
      finishedAt: null,
      leaseOwner,
      leaseExpiresAt,
    });
    const task: ModelTask = {
      id,
      status: 'running',
      seq: 0,
      total: this.total,
      done: 0,
      succeeded: 0,
      failed: 0,
      ackedSeq: 0,
      leaseOwner,
      leaseExpiresAt,
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

/**
 * A command on one task the model already holds: its random `index` picks the task (see `pick`), so it
 * can run only once a task exists. Subclasses say in `runOn` what they do to the picked task; `label`
 * names the command and the task for failure messages.
 */
abstract class TaskCommand implements StoreCommand {
  constructor(readonly index: number) {}
  check(model: Readonly<StoreModel>): boolean {
    return model.tasks.length > 0;
  }
  async run(model: StoreModel, real: ModelReal): Promise<void> {
    const task = pick(model, this.index);
    await this.runOn(task, `${this} on ${task.id}`, model, real);
  }
  protected abstract runOn(task: ModelTask, label: string, model: StoreModel, real: ModelReal): Promise<void>;
  abstract toString(): string;
}

export class AppendCommand extends TaskCommand {
  constructor(
    index: number,
    readonly input: AppendInput,
  ) {
    super(index);
  }
  protected async runOn(task: ModelTask, label: string, model: StoreModel, real: ModelReal): Promise<void> {
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

export class BurstCommand extends TaskCommand {
  constructor(
    index: number,
    readonly inputs: readonly AppendInput[],
  ) {
    super(index);
  }
  protected async runOn(task: ModelTask, label: string, model: StoreModel, real: ModelReal): Promise<void> {
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

export class AckCommand extends TaskCommand {
  constructor(
    index: number,
    readonly seqPick: number,
  ) {
    super(index);
  }
  protected async runOn(task: ModelTask, on: string, model: StoreModel, real: ModelReal): Promise<void> {
    // One past the task's seq now and then, which must be refused.
    const seq = this.seqPick % (task.seq + 2);
    const label = `${on} (seq ${seq} of ${task.seq})`;
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

export class RenewLeaseCommand extends TaskCommand {
  constructor(
    index: number,
    readonly owner: string,
    readonly ttlMs: number,
  ) {
    super(index);
  }
  protected async runOn(task: ModelTask, label: string, model: StoreModel, real: ModelReal): Promise<void> {
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

export class ReleaseLeaseCommand extends TaskCommand {
  constructor(
    index: number,
    readonly owner: string,
  ) {
    super(index);
  }
  protected async runOn(task: ModelTask, label: string, model: StoreModel, real: ModelReal): Promise<void> {
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

export class AdvanceClockCommand implements StoreCommand {
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

export class ReapCommand implements StoreCommand {
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
      const reason = `lease of worker ${task.leaseOwner} expired`; // the documented text, not the store's helper
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

export class PurgeCommand implements StoreCommand {
  constructor(
    readonly olderThanMs: number,
    readonly limit: number | undefined,
  ) {}
  check(): boolean {
    return true;
  }
  async run(model: StoreModel, real: ModelReal): Promise<void> {
    const label = this.toString();
    const now = real.clock.now();
    const cutoff = now - this.olderThanMs;
    // Never a task created in this millisecond: its id taken again would be the same run (`isPurgeable`).
    const eligible = model.tasks.filter(
      (task) =>
        !task.purged &&
        task.status !== 'running' &&
        task.finishedAt !== null &&
        task.finishedAt <= cutoff &&
        task.createdAt < now,
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
