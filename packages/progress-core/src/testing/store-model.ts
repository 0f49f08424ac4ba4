import fc from 'fast-check';
import { describe, it } from 'vitest';
import { TERMINAL_TYPES } from '../model.js';
import type { AppendInput } from '../store/inputs.js';
import { propertyParams, propertyRuns, propertyTimeoutMs } from './property-config.js';
import { TERMINAL_INPUTS } from './store-contract-events.js';
import type { ProgressStoreHarnessFactory } from './store-contract-support.js';
import {
  AckCommand,
  AdvanceClockCommand,
  AppendCommand,
  BurstCommand,
  CreateTaskCommand,
  PurgeCommand,
  ReapCommand,
  ReleaseLeaseCommand,
  RenewLeaseCommand,
} from './store-model-commands.js';
import type { StoreCommand } from './store-model-state.js';

/**
 * Store contract: the model-based test, random command sequences checked against a simple model. This
 * file holds the command generators and the `describe` wiring; the model and its checks are in
 * `store-model-state.ts`, the commands in `store-model-commands.ts`.
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

const WORKERS = ['worker-1', 'worker-2'] as const;
const TTLS = [500, 1000, 2000] as const;
/** Generous: a real database may need a few milliseconds per command. Never reached by a healthy store. */
const MODEL_TIMEOUT_MS = 300_000;

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
