import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../codes.js';
import { LIMITS } from '../limits.js';
import type { CompletedEvent, JsonValue, TerminalType } from '../model.js';
import { TERMINAL_TYPES } from '../model.js';
import type { AppendInput } from '../store/inputs.js';
import { planAppend } from '../store/task-transitions.js';
import type { ContractContext } from './store-contract-support.js';
import {
  bad,
  expectRejected,
  expectRejection,
  mustGet,
  seqsOf,
  show,
  taskInput,
} from './store-contract-support.js';
import { INVALID_IDS } from './store-contract-tasks.js';

/**
 * Store contract: appends of every event type and what they do to the task.
 *
 * @module
 */

/** One input per terminal type, with its optional fields set. */
export const TERMINAL_INPUTS: Readonly<Record<TerminalType, AppendInput>> = Object.freeze({
  completed: { type: 'completed', result: { tainted: ['node-1'], count: 1 }, message: 'all done' },
  failed: { type: 'failed', error: { code: 'E_API', message: 'the API refused' } },
  cancelled: { type: 'cancelled', reason: 'user asked' },
  interrupted: { type: 'interrupted', reason: 'replica shutting down' },
});

/** One input of every type, terminal ones included. */
const EVERY_INPUT: readonly AppendInput[] = [
  { type: 'progress', done: 1 },
  { type: 'item', key: 'node-9', ok: true },
  ...TERMINAL_TYPES.map((type) => TERMINAL_INPUTS[type]),
];

/** A JSON value that exercises what naive serialization gets wrong. */
const AWKWARD_JSON: JsonValue = {
  nodes: ['node-1', 'nöde-2 🚀', '日本語'],
  count: 2,
  ratio: 0.1,
  big: 1e21,
  negative: -3.25,
  nested: { deep: [[], {}, [null, true, false]] },
  quoted: 'say "hi" \\ back / slash',
  empty: '',
  'key with spaces': 'ok',
  // Control characters, U+0001 among them: a store may join texts on it (the Postgres store does, for bodies).
  controls: 'a\u0001b\u0002c\td\u001f',
};

/** Appending, counters and terminal events. */
export function describeEventContract(ctx: ContractContext): void {
  describe('append', () => {
    it('returns exactly the event and row planAppend plans, and getTask/readEvents agree', async () => {
      await ctx.store.createTask(taskInput({ id: 'task-1', lease: { owner: 'worker-1', ttlMs: 60_000 } }));
      await ctx.store.ack('task-1', 0);
      const inputs: AppendInput[] = [
        { type: 'progress', total: 4, done: 0, current: 'node-1', message: 'starting' },
        { type: 'item', key: 'node-1', ok: true, detail: { taints: ['a'] }, current: 'node-2' },
        { type: 'item', key: 'node-2', ok: false, error: 'conflict' },
        { type: 'item', key: 'node-3', ok: false },
        { type: 'progress', message: null },
        { type: 'progress', done: 10, total: null, current: null },
      ];
      for (const input of inputs) {
        const before = await mustGet(ctx.store, 'task-1');
        const now = ctx.clock.now();
        const result = await ctx.store.append('task-1', input);
        const what = `append(${show(input)})`;
        expect(result, `${what} result`).toEqual(planAppend(before, input, now));
        expect(await ctx.store.getTask('task-1'), `getTask after ${what}`).toEqual(result.task);
        expect(await ctx.store.readEvents('task-1', before.seq), `readEvents after ${what}`).toEqual([
          result.event,
        ]);
        ctx.clock.advance(7);
      }
    });

    it('gives seqs 1..n in order', async () => {
      await ctx.store.createTask(taskInput({ id: 'task-1' }));
      const seqs: number[] = [];
      for (let i = 0; i < 5; i++) {
        seqs.push((await ctx.store.append('task-1', { type: 'item', key: `node-${i}`, ok: true })).event.seq);
      }
      expect(seqs, 'seqs returned by append').toEqual([1, 2, 3, 4, 5]);
      expect(seqsOf(await ctx.store.readEvents('task-1', 0)), 'seqs in the log').toEqual([1, 2, 3, 4, 5]);
      expect((await mustGet(ctx.store, 'task-1')).seq, 'snapshot seq').toBe(5);
    });

    it('counts finished items in done, succeeded and failed', async () => {
      await ctx.store.createTask(taskInput({ id: 'task-1', total: 3 }));
      await ctx.store.append('task-1', { type: 'item', key: 'node-1', ok: true });
      const failed = await ctx.store.append('task-1', {
        type: 'item',
        key: 'node-2',
        ok: false,
        error: 'conflict',
      });
      const last = await ctx.store.append('task-1', { type: 'item', key: 'node-3', ok: false });
      expect(failed.event, 'failed item event').toMatchObject({
        type: 'item',
        item: { key: 'node-2', ok: false, error: 'conflict', detail: null },
      });
      expect(last.event, 'failed item without an error').toMatchObject({
        item: { ok: false, error: 'failed' },
      });
      const task = await mustGet(ctx.store, 'task-1');
      expect(
        { done: task.done, succeeded: task.succeeded, failed: task.failed, total: task.total },
        'counters after 1 ok and 2 failed items',
      ).toEqual({ done: 3, succeeded: 1, failed: 2, total: 3 });
    });

    it('progress sets absolute values and leaves omitted fields alone', async () => {
      await ctx.store.createTask(taskInput({ id: 'task-1', message: 'queued' }));
      await ctx.store.append('task-1', { type: 'progress', total: 10, done: 5, current: 'node-5' });
      let task = await mustGet(ctx.store, 'task-1');
      expect([task.total, task.done, task.current, task.message], 'after the first progress').toEqual([
        10,
        5,
        'node-5',
        'queued',
      ]);
      await ctx.store.append('task-1', { type: 'progress', done: 2 });
      task = await mustGet(ctx.store, 'task-1');
      expect([task.total, task.done, task.current], 'done is absolute and may go down').toEqual([
        10,
        2,
        'node-5',
      ]);
      await ctx.store.append('task-1', { type: 'progress', total: null, current: null, message: null });
      task = await mustGet(ctx.store, 'task-1');
      expect([task.total, task.done, task.current, task.message], 'fields set to null').toEqual([
        null,
        2,
        null,
        null,
      ]);
      expect([task.succeeded, task.failed], 'progress never touches item counters').toEqual([0, 0]);
    });

    it('round-trips JSON results, item details and text exactly', async () => {
      await ctx.store.createTask(taskInput({ id: 'task-1' }));
      const item = await ctx.store.append('task-1', {
        type: 'item',
        key: 'nöde "1" 🚀',
        ok: false,
        error: 'línea\nsegunda \\ "quoted" \u0001',
        detail: AWKWARD_JSON,
        current: '日本語',
      });
      const done = await ctx.store.append('task-1', {
        type: 'completed',
        result: AWKWARD_JSON,
        message: '✓ done',
      });
      const events = await ctx.store.readEvents('task-1', 0);
      expect(events, 'events read back').toEqual([item.event, done.event]);
      expect(events[0]?.type === 'item' && events[0].item.detail, 'item detail').toEqual(AWKWARD_JSON);
      const task = await mustGet(ctx.store, 'task-1');
      expect(task.result, 'task result').toEqual(AWKWARD_JSON);
      expect(task.message, 'task message').toBe('✓ done');
      const scalars: JsonValue[] = [null, 0, -1.5, 'text', '', true, false, [], {}];
      for (const [i, scalar] of scalars.entries()) {
        await ctx.store.createTask(taskInput({ id: `scalar-${i}` }));
        const { event } = await ctx.store.append(`scalar-${i}`, { type: 'completed', result: scalar });
        expect(
          { type: event.type, result: (event as CompletedEvent).result },
          `event result ${show(scalar)}`,
        ).toEqual({
          type: 'completed',
          result: scalar,
        });
        expect((await mustGet(ctx.store, `scalar-${i}`)).result, `task result ${show(scalar)}`).toEqual(
          scalar,
        );
      }
    });

    it('keeps JSON as JSON reads back: -0 as 0 and an array hole as null, in the append result and in reads', async () => {
      // Stores that keep JSON text read these back as 0 and null; the memory store kept -0 and the hole
      // (not even a JsonValue), and every store's append result returned them: one value, two answers.
      // biome-ignore lint/suspicious/noSparseArray: the hole is the point.
      const odd = { zero: -0, list: [, 1, -0] } as unknown as JsonValue;
      const expected = { zero: 0, list: [null, 1, 0] };
      await ctx.store.createTask(taskInput({ id: 'task-1' }));
      const item = await ctx.store.append('task-1', { type: 'item', key: 'k', ok: true, detail: odd });
      const done = await ctx.store.append('task-1', { type: 'completed', result: odd });
      const [readItem, readDone] = await ctx.store.readEvents('task-1', 0);
      const task = await mustGet(ctx.store, 'task-1');
      const seen = {
        appendedDetail: item.event.type === 'item' ? item.event.item.detail : undefined,
        appendedResult: (done.event as CompletedEvent).result,
        appendedTaskResult: done.task.result,
        readDetail: readItem?.type === 'item' ? readItem.item.detail : undefined,
        readResult: (readDone as CompletedEvent | undefined)?.result,
        taskResult: task.result,
      };
      expect(seen).toStrictEqual({
        appendedDetail: expected,
        appendedResult: expected,
        appendedTaskResult: expected,
        readDetail: expected,
        readResult: expected,
        taskResult: expected,
      });
    });

    it('reads a count given as -0 back as 0, as every store keeps it', async () => {
      // SQL columns read -0 back as 0; the memory store (and every append result) kept -0.
      const created = await ctx.store.createTask(taskInput({ id: 'task-1', total: -0 }));
      const progress = await ctx.store.append('task-1', { type: 'progress', total: -0, done: -0 });
      const [event] = await ctx.store.readEvents('task-1', 0);
      const task = await mustGet(ctx.store, 'task-1');
      const counts = [
        created.total,
        progress.event.progress.total,
        progress.event.progress.done,
        progress.task.total,
        progress.task.done,
        event?.progress.total,
        event?.progress.done,
        task.total,
        task.done,
      ];
      expect(counts.map((count) => Object.is(count, -0))).toEqual(counts.map(() => false));
    });

    it('accepts JSON of exactly the size limit and rejects one byte more', async () => {
      await ctx.store.createTask(taskInput({ id: 'task-1' }));
      // JSON.stringify adds two quote characters.
      const largest = 'x'.repeat(LIMITS.maxJsonBytes - 2);
      const item = await ctx.store.append('task-1', {
        type: 'item',
        key: 'node-1',
        ok: true,
        detail: largest,
      });
      expect(item.event.type === 'item' && item.event.item.detail, 'largest detail round-trips').toBe(
        largest,
      );
      await expectRejection('item with a detail over the limit', ErrorCode.InvalidInput, () =>
        ctx.store.append('task-1', { type: 'item', key: 'node-2', ok: true, detail: `${largest}x` }),
      );
      await expectRejection('completed with a result over the limit', ErrorCode.InvalidInput, () =>
        ctx.store.append('task-1', { type: 'completed', result: { data: largest } }),
      );
      expect((await mustGet(ctx.store, 'task-1')).seq, 'seq after the rejected appends').toBe(1);
    });

    it('accepts JSON 64 levels deep and rejects 65, arrays and objects alike, empty or not', async () => {
      await ctx.store.createTask(taskInput({ id: 'task-1' }));
      /** `levels` arrays (or objects) nested in each other, the innermost holding `leaf`. */
      const nested = (levels: number, open: string, close: string, leaf: string) =>
        JSON.parse(`${open.repeat(levels)}${leaf}${close.repeat(levels)}`) as JsonValue;
      const shapes = [
        ['[', ']', ''],
        ['[', ']', '1'],
        ['{"a":', '}', '{}'],
      ] as const;
      for (const [open, close, leaf] of shapes) {
        // The object shape's leaf is a level of its own.
        const levels = (n: number) => (leaf === '{}' ? n - 1 : n);
        const deepest = nested(levels(64), open, close, leaf);
        const item = await ctx.store.append('task-1', { type: 'item', key: 'k', ok: true, detail: deepest });
        expect(item.event.type === 'item' && item.event.item.detail, `64 levels: ${open}${leaf}`).toEqual(
          deepest,
        );
        const [read] = await ctx.store.readEvents('task-1', item.event.seq - 1, 1);
        expect(read?.type === 'item' && read.item.detail, `64 levels read back: ${open}${leaf}`).toEqual(
          deepest,
        );
        const tooDeep = nested(levels(65), open, close, leaf);
        await expectRejection(`65 levels: ${open}${leaf}`, ErrorCode.InvalidInput, () =>
          ctx.store.append('task-1', { type: 'item', key: 'k', ok: true, detail: tooDeep }),
        );
        await expectRejection(`65 levels as a result: ${open}${leaf}`, ErrorCode.InvalidInput, () =>
          ctx.store.append('task-1', { type: 'completed', result: tooDeep }),
        );
      }
      expect((await mustGet(ctx.store, 'task-1')).seq, 'seq after the rejected appends').toBe(shapes.length);
    });

    it("round-trips keys named after Object.prototype's members and refuses an own __proto__ key", async () => {
      // Parsed, so every key is an own data property, as it is in a payload that came over the wire.
      const text =
        '{"constructor":{"prototype":{"constructor":1}},"prototype":[{"toString":"x"}],"hasOwnProperty":null,"valueOf":true,"isPrototypeOf":{}}';
      const payload = JSON.parse(text) as JsonValue;
      await ctx.store.createTask(taskInput({ id: 'task-1' }));
      const item = await ctx.store.append('task-1', {
        type: 'item',
        key: 'constructor',
        ok: true,
        detail: payload,
      });
      const done = await ctx.store.append('task-1', { type: 'completed', result: payload });
      const [readItem, readDone] = await ctx.store.readEvents('task-1', 0);
      const task = await mustGet(ctx.store, 'task-1');
      const seen = [
        item.event.type === 'item' ? item.event.item.detail : undefined,
        readItem?.type === 'item' ? readItem.item.detail : undefined,
        (done.event as CompletedEvent).result,
        (readDone as CompletedEvent | undefined)?.result,
        done.task.result,
        task.result,
      ];
      // As text, so the keys' order counts too and no comparison reads a node's `constructor`.
      expect(seen.map((value) => JSON.stringify(value))).toEqual(seen.map(() => text));
      for (const value of seen) expect(Object.getPrototypeOf(value)).toBe(Object.prototype);
      // An own __proto__ key is refused, as a detail and as a result, nested or not.
      await ctx.store.createTask(taskInput({ id: 'task-2' }));
      for (const proto of ['{"__proto__":{"polluted":true}}', '{"a":[{"__proto__":{"polluted":true}}]}']) {
        const value = JSON.parse(proto) as JsonValue;
        await expectRejection(`detail ${proto}`, ErrorCode.InvalidInput, () =>
          ctx.store.append('task-2', { type: 'item', key: 'k', ok: true, detail: value }),
        );
        await expectRejection(`result ${proto}`, ErrorCode.InvalidInput, () =>
          ctx.store.append('task-2', { type: 'completed', result: value }),
        );
      }
      expect((await mustGet(ctx.store, 'task-2')).seq, 'seq after the rejected appends').toBe(0);
      expect(({} as Record<string, unknown>).polluted, 'Object.prototype').toBeUndefined();
    });

    it('rejects invalid events with invalid_input and appends nothing', async () => {
      await ctx.store.createTask(taskInput({ id: 'task-1' }));
      const invalid: unknown[] = [
        null,
        'progress',
        {},
        { type: 'nope' },
        { type: 'item' },
        { type: 'item', key: '', ok: true },
        { type: 'item', key: 'k'.repeat(LIMITS.maxKeyLength + 1), ok: true },
        { type: 'item', key: 'node-1', ok: 'yes' },
        { type: 'item', key: 'node-1', ok: true, detail: { when: new Date(0) } },
        { type: 'item', key: 'node-1', ok: true, detail: Number.NaN },
        { type: 'item', key: 'node-1', ok: true, colour: 'red' },
        { type: 'progress', done: -1 },
        { type: 'progress', done: 1.5 },
        { type: 'progress', done: Number.NaN },
        { type: 'progress', total: 2 ** 53 },
        { type: 'progress', message: 'm'.repeat(LIMITS.maxMessageLength + 1) },
        { type: 'progress', current: 'c'.repeat(LIMITS.maxKeyLength + 1) },
        { type: 'progress', colour: 'red' },
        { type: 'completed', result: () => 1 },
        { type: 'failed' },
        { type: 'failed', error: { code: 'E' } },
        { type: 'failed', error: 'boom' },
        { type: 'cancelled', reason: 42 },
        { type: 'interrupted' },
        // U+0000 anywhere in a text or JSON string: Postgres cannot store it, so no store accepts it.
        { type: 'item', key: 'node\u0000-1', ok: true },
        { type: 'progress', message: 'half\u0000way' },
        { type: 'completed', result: { note: 'a\u0000b' } },
        { type: 'completed', result: { 'k\u0000': 1 } },
        // Unpaired surrogates are not Unicode: Postgres refuses them, SQLite would mangle them.
        { type: 'item', key: 'node-\ud800', ok: true },
        { type: 'progress', current: '\udc00x' },
        { type: 'completed', result: ['ok\udbff'] },
      ];
      for (const input of invalid) {
        await expectRejection(`append(${show(input)})`, ErrorCode.InvalidInput, () =>
          ctx.store.append('task-1', bad(input)),
        );
      }
      expect((await mustGet(ctx.store, 'task-1')).seq, 'seq after rejected appends').toBe(0);
      expect(await ctx.store.readEvents('task-1', 0), 'log after rejected appends').toEqual([]);
    });

    it('refuses an item that would count past LIMITS.maxCount, and the task stays readable and endable', async () => {
      await ctx.store.createTask(taskInput({ id: 'task-1' }));
      await ctx.store.append('task-1', { type: 'progress', done: LIMITS.maxCount });
      await expectRejection('an item at done = maxCount', ErrorCode.InvalidInput, () =>
        ctx.store.append('task-1', { type: 'item', key: 'node-1', ok: true }),
      );
      expect((await mustGet(ctx.store, 'task-1')).done).toBe(LIMITS.maxCount);
      await ctx.store.append('task-1', { type: 'completed' });
      expect((await mustGet(ctx.store, 'task-1')).status).toBe('completed');
    });

    it('rejects an invalid task id with invalid_input', async () => {
      for (const value of INVALID_IDS) {
        await expectRejection(`append to task id ${show(value)}`, ErrorCode.InvalidInput, () =>
          ctx.store.append(bad(value), { type: 'progress' }),
        );
      }
    });

    it('every method that takes a task id rejects an unknown task with task_not_found', async () => {
      const id = 'no-such-task';
      await expectRejection('append', ErrorCode.TaskNotFound, () =>
        ctx.store.append(id, { type: 'progress' }),
      );
      await expectRejection('append(completed)', ErrorCode.TaskNotFound, () =>
        ctx.store.append(id, { type: 'completed' }),
      );
      await expectRejection('readEvents', ErrorCode.TaskNotFound, () => ctx.store.readEvents(id, 0));
      await expectRejection('ack', ErrorCode.TaskNotFound, () => ctx.store.ack(id, 0));
      await expectRejection('renewLease', ErrorCode.TaskNotFound, () =>
        ctx.store.renewLease(id, 'worker-1', 1000),
      );
      await expectRejection('releaseLease', ErrorCode.TaskNotFound, () =>
        ctx.store.releaseLease(id, 'worker-1'),
      );
      expect(await ctx.store.getTask(id), 'getTask of an unknown task').toBeUndefined();
      expect(await ctx.store.getTask(id), 'none of the calls created the task').toBeUndefined();
    });

    it('every method rejects garbage arguments with invalid_input, never throwing synchronously', async () => {
      await ctx.store.createTask(taskInput({ id: 'task-1' }));
      const { store } = ctx;
      const calls: [string, () => Promise<unknown>][] = [
        ['createTask(42)', () => store.createTask(bad(42))],
        ['getTask(42)', () => store.getTask(bad(42))],
        ['listTasks(42)', () => store.listTasks(bad(42))],
        ['append(task, null)', () => store.append('task-1', bad(null))],
        ['append(42, progress)', () => store.append(bad(42), { type: 'progress' })],
        ['readEvents(task, -1)', () => store.readEvents('task-1', -1)],
        ['readEvents(task, "0")', () => store.readEvents('task-1', bad('0'))],
        ['readEvents(task, 0, 0)', () => store.readEvents('task-1', 0, 0)],
        ['latestSeqs(42)', () => store.latestSeqs(bad(42))],
        ['latestSeqs([42])', () => store.latestSeqs(bad([42]))],
        ['ack(task, -1)', () => store.ack('task-1', -1)],
        ['ack(task, 0.5)', () => store.ack('task-1', 0.5)],
        ['renewLease(task, 42, 1000)', () => store.renewLease('task-1', bad(42), 1000)],
        ['renewLease(task, worker, 0)', () => store.renewLease('task-1', 'worker-1', 0)],
        ['releaseLease(task, "")', () => store.releaseLease('task-1', '')],
        ['reapExpiredLeases(42)', () => store.reapExpiredLeases(bad(42))],
        ['purgeFinished(42)', () => store.purgeFinished(bad(42))],
        ['purgeFinished(undefined)', () => store.purgeFinished(bad(undefined))],
      ];
      for (const [what, call] of calls) await expectRejection(what, ErrorCode.InvalidInput, call);
      expect(await mustGet(ctx.store, 'task-1'), 'the task after garbage calls').toMatchObject({
        seq: 0,
        ackedSeq: 0,
        leaseOwner: null,
      });
    });
  });

  describe('terminal events', () => {
    for (const type of TERMINAL_TYPES) {
      it(`${type} ends the task as planAppend plans: status, finishedAt, cleared current and lease`, async () => {
        await ctx.store.createTask(
          taskInput({ id: 'task-1', total: 2, lease: { owner: 'worker-1', ttlMs: 60_000 } }),
        );
        await ctx.store.append('task-1', { type: 'item', key: 'node-1', ok: true, current: 'node-2' });
        ctx.clock.advance(5);
        const before = await mustGet(ctx.store, 'task-1');
        const now = ctx.clock.now();
        const result = await ctx.store.append('task-1', TERMINAL_INPUTS[type]);
        expect(result, `append(${type}) result`).toEqual(planAppend(before, TERMINAL_INPUTS[type], now));
        expect(result.task, `task after ${type}`).toMatchObject({
          status: type,
          finishedAt: now,
          current: null,
          leaseOwner: null,
          leaseExpiresAt: null,
        });
        expect(await ctx.store.getTask('task-1'), `getTask after ${type}`).toEqual(result.task);
      });

      it(`after ${type}, every append and renewLease rejects with task_finished and nothing changes`, async () => {
        await ctx.store.createTask(taskInput({ id: 'task-1' }));
        await ctx.store.append('task-1', { type: 'progress', done: 1 });
        await ctx.store.append('task-1', TERMINAL_INPUTS[type]);
        const ended = await mustGet(ctx.store, 'task-1');
        const log = await ctx.store.readEvents('task-1', 0);
        ctx.clock.advance(10);
        for (const input of EVERY_INPUT) {
          await expectRejection(`append(${input.type}) after ${type}`, ErrorCode.TaskFinished, () =>
            ctx.store.append('task-1', input),
          );
        }
        await expectRejection(`renewLease after ${type}`, ErrorCode.TaskFinished, () =>
          ctx.store.renewLease('task-1', 'worker-1', 1000),
        );
        expect(await ctx.store.getTask('task-1'), `task after appends following ${type}`).toEqual(ended);
        expect(await ctx.store.readEvents('task-1', 0), `log after appends following ${type}`).toEqual(log);
      });
    }

    it('concurrent terminal appends: exactly one wins, the others get task_finished', async () => {
      await ctx.store.createTask(taskInput({ id: 'task-1' }));
      const results = await Promise.allSettled(
        TERMINAL_TYPES.map((type) => ctx.store.append('task-1', TERMINAL_INPUTS[type])),
      );
      const winners = results.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
      expect(winners.length, `terminal appends that succeeded: ${show(results.map((r) => r.status))}`).toBe(
        1,
      );
      results.forEach((result, i) => {
        if (result.status === 'rejected')
          expectRejected(`losing ${TERMINAL_TYPES[i]}`, ErrorCode.TaskFinished, result);
      });
      const log = await ctx.store.readEvents('task-1', 0);
      expect(
        log.map((event) => event.type),
        'the log',
      ).toEqual([winners[0]?.event.type]);
      expect((await mustGet(ctx.store, 'task-1')).status, 'status').toBe(winners[0]?.event.type);
    });
  });
}
