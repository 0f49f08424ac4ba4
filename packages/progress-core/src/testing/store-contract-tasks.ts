import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../codes.js';
import { ID_PATTERN, LIMITS } from '../limits.js';
import type { TaskStatus } from '../model.js';
import type { CreateTaskInput } from '../store/inputs.js';
import { STORE_DEFAULTS } from '../store/progress-store.js';
import { newTask } from '../store/task-transitions.js';
import type { ContractContext } from './store-contract-support.js';
import {
  bad,
  compareIds,
  createMany,
  expectRejection,
  KIND,
  mustGet,
  OWNER,
  show,
  taskInput,
} from './store-contract-support.js';

/**
 * Store contract: task creation, lookup and listing.
 *
 * @module
 */

/** For the one test that creates a thousand tasks: a database store may need more than vitest's 5 s. */
const BULK_TIMEOUT_MS = 60_000;

/** Values that are not valid ids, owners or kinds. */
export const INVALID_IDS: readonly unknown[] = [
  '',
  ' ',
  'has space',
  'tab\there',
  'new\nline',
  'naïve',
  'semi;colon',
  "quote'",
  'x'.repeat(LIMITS.maxIdLength + 1),
  42,
  null,
  {},
];

/** Task creation, lookup and listing. */
export function describeTaskContract(ctx: ContractContext): void {
  describe('createTask and getTask', () => {
    it('createTask returns the row newTask plans, with every default', async () => {
      const now = ctx.clock.now();
      const task = await ctx.store.createTask({ id: 'task-1', owner: OWNER, kind: KIND });
      expect(task, 'createTask result').toEqual(newTask({ id: 'task-1', owner: OWNER, kind: KIND }, now));
    });

    it('createTask keeps total, message and lease', async () => {
      const now = ctx.clock.now();
      const input: CreateTaskInput & { id: string } = {
        id: 'task-1',
        owner: OWNER,
        kind: KIND,
        total: 40,
        message: 'tainting nodes',
        lease: { owner: 'worker-1', ttlMs: 30_000 },
      };
      const task = await ctx.store.createTask(input);
      expect(task, 'createTask result').toEqual(newTask(input, now));
      expect(task.leaseExpiresAt, 'leaseExpiresAt = now + ttlMs').toBe(now + 30_000);
    });

    it('getTask returns what createTask returned', async () => {
      const created = await ctx.store.createTask(taskInput({ id: 'task-1', total: 3, message: 'hi' }));
      expect(await ctx.store.getTask('task-1'), 'getTask after createTask').toEqual(created);
    });

    it('createTask without an id generates a unique, valid one', async () => {
      const first = await ctx.store.createTask(taskInput());
      const second = await ctx.store.createTask(taskInput());
      expect(first.id, 'generated id matches ID_PATTERN').toMatch(ID_PATTERN);
      expect(first.id.length, 'generated id length').toBeLessThanOrEqual(LIMITS.maxIdLength);
      expect(second.id, 'two generated ids differ').not.toBe(first.id);
      expect(await ctx.store.getTask(first.id), 'getTask of a generated id').toEqual(first);
    });

    it('accepts ids, owners and kinds of the maximum length and every allowed character', async () => {
      const long = 'x'.repeat(LIMITS.maxIdLength);
      const task = await ctx.store.createTask({ id: long, owner: long, kind: long });
      expect(await ctx.store.getTask(long), 'task with a maximum-length id').toEqual(task);
      const punctuated = 'Az09_.:@/-';
      await ctx.store.createTask({ id: punctuated, owner: punctuated, kind: punctuated });
      expect((await mustGet(ctx.store, punctuated)).owner, 'owner with every allowed character').toBe(
        punctuated,
      );
    });

    it('keeps whole milliseconds from a clock that returns fractions, so createdAt works as a run fence', async () => {
      // A clock such as `() => performance.timeOrigin + performance.now()`: every time a store keeps must
      // still be an integer, which frames and fences require (a fractional createdAt made every snapshot
      // an invalid frame for clients and every fenced write invalid_input).
      ctx.clock.advance(0.75);
      const created = await ctx.store.createTask(
        taskInput({ id: 'task-1', lease: { owner: 'worker-1', ttlMs: 1000 } }),
      );
      const run = { run: created.createdAt };
      ctx.clock.advance(0.5);
      const { event } = await ctx.store.append('task-1', { type: 'progress', done: 1 }, run);
      ctx.clock.advance(0.5);
      await ctx.store.renewLease('task-1', 'worker-1', 1000, run);
      ctx.clock.advance(0.5);
      const ended = await ctx.store.append('task-1', { type: 'completed' }, run);
      const stored = await mustGet(ctx.store, 'task-1');
      const [read] = await ctx.store.readEvents('task-1', 0);
      const times = {
        createdAt: created.createdAt,
        leaseExpiresAt: created.leaseExpiresAt,
        eventTime: event.time,
        endTime: ended.event.time,
        finishedAt: stored.finishedAt,
        updatedAt: stored.updatedAt,
        storedCreatedAt: stored.createdAt,
        readTime: read?.time,
      };
      for (const [name, time] of Object.entries(times)) {
        expect(Number.isSafeInteger(time), `${name} (${time}) is a whole millisecond`).toBe(true);
      }
      ctx.clock.advance(0.5);
      expect(await ctx.store.purgeFinished({ olderThanMs: 0 }), 'purged').toBe(1);
    });

    it('createTask with a taken id rejects with invalid_input and keeps the first task', async () => {
      const first = await ctx.store.createTask(taskInput({ id: 'task-1', kind: 'first' }));
      await expectRejection('createTask with a taken id', ErrorCode.InvalidInput, () =>
        ctx.store.createTask({ id: 'task-1', owner: 'bob', kind: 'second' }),
      );
      expect(await ctx.store.getTask('task-1'), 'the first task is untouched').toEqual(first);
    });

    it('concurrent creates with the same id: exactly one succeeds, the others get invalid_input', async () => {
      const results = await Promise.allSettled(
        [0, 1, 2, 3, 4].map((i) => ctx.store.createTask(taskInput({ id: 'task-1', kind: `kind-${i}` }))),
      );
      const winners = results.filter((result) => result.status === 'fulfilled');
      expect(winners.length, `successful creates, results: ${show(results.map((r) => r.status))}`).toBe(1);
      for (const result of results) {
        if (result.status === 'rejected') {
          expect((result.reason as { code?: unknown }).code, `losing create: ${show(result.reason)}`).toBe(
            ErrorCode.InvalidInput,
          );
        }
      }
    });

    it('createTask rejects invalid ids, owners and kinds with invalid_input and creates nothing', async () => {
      for (const value of INVALID_IDS) {
        await expectRejection(`createTask with id ${show(value)}`, ErrorCode.InvalidInput, () =>
          ctx.store.createTask(taskInput({ id: bad(value) })),
        );
        await expectRejection(`createTask with owner ${show(value)}`, ErrorCode.InvalidInput, () =>
          ctx.store.createTask({ owner: bad(value), kind: KIND }),
        );
        await expectRejection(`createTask with kind ${show(value)}`, ErrorCode.InvalidInput, () =>
          ctx.store.createTask({ owner: OWNER, kind: bad(value) }),
        );
      }
      expect(await ctx.store.listTasks({ owner: OWNER }), 'tasks after rejected creates').toEqual([]);
    });

    it('createTask rejects bad counts, oversized text, bad leases and unknown fields with invalid_input', async () => {
      const cases: [string, unknown][] = [
        ['total -1', { total: -1 }],
        ['total 1.5', { total: 1.5 }],
        ['total NaN', { total: Number.NaN }],
        ['total Infinity', { total: Number.POSITIVE_INFINITY }],
        ['total 2^53', { total: 2 ** 53 }],
        ['total "3"', { total: '3' }],
        ['message too long', { message: 'm'.repeat(LIMITS.maxMessageLength + 1) }],
        ['message 42', { message: 42 }],
        ['lease ttl 0', { lease: { owner: 'worker-1', ttlMs: 0 } }],
        ['lease ttl 1.5', { lease: { owner: 'worker-1', ttlMs: 1.5 } }],
        ['lease ttl over a day', { lease: { owner: 'worker-1', ttlMs: 86_400_001 } }],
        ['lease without ttl', { lease: { owner: 'worker-1' } }],
        ['lease owner empty', { lease: { owner: '', ttlMs: 1000 } }],
        ['unknown field', { colour: 'red' }],
      ];
      for (const [label, overrides] of cases) {
        await expectRejection(`createTask with ${label}`, ErrorCode.InvalidInput, () =>
          ctx.store.createTask({ ...taskInput(), ...(overrides as object) }),
        );
      }
      for (const input of [null, undefined, 'task', 42, []]) {
        await expectRejection(`createTask(${show(input)})`, ErrorCode.InvalidInput, () =>
          ctx.store.createTask(bad(input)),
        );
      }
      expect(await ctx.store.listTasks({ owner: OWNER }), 'tasks after rejected creates').toEqual([]);
    });

    it('getTask returns undefined for an unknown id and rejects an invalid id with invalid_input', async () => {
      expect(await ctx.store.getTask('no-such-task'), 'getTask of an unknown id').toBeUndefined();
      for (const value of INVALID_IDS) {
        await expectRejection(`getTask(${show(value)})`, ErrorCode.InvalidInput, () =>
          ctx.store.getTask(bad(value)),
        );
      }
    });
  });

  describe('listTasks', () => {
    it("returns only the owner's tasks, newest first, as full rows", async () => {
      const a = await ctx.store.createTask(taskInput({ id: 'task-a' }));
      ctx.clock.advance(10);
      await ctx.store.createTask({ id: 'task-bob', owner: 'bob', kind: KIND });
      const b = await ctx.store.createTask(taskInput({ id: 'task-b' }));
      ctx.clock.advance(10);
      const c = await ctx.store.createTask(taskInput({ id: 'task-0' }));
      expect(await ctx.store.listTasks({ owner: OWNER }), "alice's tasks").toEqual([c, b, a]);
      expect(
        (await ctx.store.listTasks({ owner: 'bob' })).map((task) => task.id),
        "bob's tasks",
      ).toEqual(['task-bob']);
      expect(await ctx.store.listTasks({ owner: 'carol' }), 'an owner without tasks').toEqual([]);
    });

    it('breaks createdAt ties by id descending, in binary (code unit) order', async () => {
      // Binary order: '-' < '.' < '9' < 'B' < '_' < 'a'. A locale collation would sort these differently.
      const ids = ['task-a', 'task-B', 'task_c', 'task-9', 'task.Z', 'task-A'];
      for (const id of ids) await ctx.store.createTask(taskInput({ id }));
      const expected = [...ids].sort(compareIds).reverse();
      expect(
        (await ctx.store.listTasks({ owner: OWNER })).map((task) => task.id),
        'ids of tasks created at the same millisecond',
      ).toEqual(expected);
    });

    it('filters by statuses; an empty list matches nothing', async () => {
      const ended: [string, TaskStatus][] = [
        ['task-c', 'completed'],
        ['task-f', 'failed'],
        ['task-x', 'cancelled'],
      ];
      await ctx.store.createTask(taskInput({ id: 'task-r' }));
      for (const [id] of ended) await ctx.store.createTask(taskInput({ id }));
      await ctx.store.append('task-c', { type: 'completed' });
      await ctx.store.append('task-f', { type: 'failed', error: { code: 'boom', message: 'it broke' } });
      await ctx.store.append('task-x', { type: 'cancelled' });
      const idsFor = async (statuses: TaskStatus[]) =>
        (await ctx.store.listTasks({ owner: OWNER, statuses })).map((task) => task.id).sort();
      expect(await idsFor(['running']), 'statuses [running]').toEqual(['task-r']);
      expect(await idsFor(['completed', 'failed']), 'statuses [completed, failed]').toEqual([
        'task-c',
        'task-f',
      ]);
      expect(await idsFor(['interrupted']), 'statuses [interrupted]').toEqual([]);
      expect(await idsFor([]), 'statuses []').toEqual([]);
      expect((await ctx.store.listTasks({ owner: OWNER })).length, 'no statuses filter').toBe(4);
    });

    it(`applies limit, newest first, and a default limit of ${STORE_DEFAULTS.listLimit}`, async () => {
      const count = STORE_DEFAULTS.listLimit + 1;
      for (let i = 0; i < count; i++) {
        await ctx.store.createTask(taskInput({ id: `task-${String(i).padStart(3, '0')}` }));
        ctx.clock.advance(1);
      }
      const newestFirst = await ctx.store.listTasks({ owner: OWNER });
      expect(newestFirst.length, 'default limit').toBe(STORE_DEFAULTS.listLimit);
      expect(newestFirst[0]?.id, 'newest task first').toBe(`task-${String(count - 1).padStart(3, '0')}`);
      expect(
        (await ctx.store.listTasks({ owner: OWNER, limit: 3 })).map((task) => task.id),
        'limit 3',
      ).toEqual([count - 1, count - 2, count - 3].map((i) => `task-${String(i).padStart(3, '0')}`));
    });

    it(
      `clamps a limit above ${STORE_DEFAULTS.maxListLimit} instead of rejecting it`,
      async () => {
        await createMany(ctx.store, STORE_DEFAULTS.maxListLimit + 1, {
          owner: OWNER,
          prefix: 'task',
          concurrency: ctx.options.concurrency,
        });
        const listed = await ctx.store.listTasks({ owner: OWNER, limit: STORE_DEFAULTS.maxListLimit * 5 });
        expect(listed.length, 'tasks listed with an over-limit limit').toBe(STORE_DEFAULTS.maxListLimit);
      },
      BULK_TIMEOUT_MS,
    );

    it('rejects a bad query with invalid_input', async () => {
      const queries: unknown[] = [
        { owner: '' },
        { owner: 'has space' },
        {},
        { owner: OWNER, statuses: ['done'] },
        { owner: OWNER, statuses: 'running' },
        { owner: OWNER, limit: 0 },
        { owner: OWNER, limit: -1 },
        { owner: OWNER, limit: 1.5 },
        { owner: OWNER, limit: '5' },
        { owner: OWNER, limit: Number.NaN },
        { owner: OWNER, colour: 'red' },
        null,
        undefined,
      ];
      for (const query of queries) {
        await expectRejection(`listTasks(${show(query)})`, ErrorCode.InvalidInput, () =>
          ctx.store.listTasks(bad(query)),
        );
      }
    });
  });
}
