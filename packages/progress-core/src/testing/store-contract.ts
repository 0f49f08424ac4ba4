import { afterEach, beforeEach, describe } from 'vitest';
import type { Resolved } from '../options.js';
import { defaultsOf, integer, resolveOptions } from '../options.js';
import type { ProgressStore } from '../store/progress-store.js';
import { describeEventContract } from './store-contract-events.js';
import { describeFeedContract } from './store-contract-feed.js';
import { describeFenceContract } from './store-contract-fences.js';
import { describeLeaseContract } from './store-contract-leases.js';
import { describeLifecycleContract } from './store-contract-lifecycle.js';
import { describeLogContract } from './store-contract-log.js';
import type {
  ContractContext,
  ProgressStoreHarness,
  ProgressStoreHarnessFactory,
} from './store-contract-support.js';
import { describeTaskContract } from './store-contract-tasks.js';
import { describeModelContract } from './store-model.js';

export type { ProgressStoreHarness, ProgressStoreHarnessFactory } from './store-contract-support.js';

/**
 * `describeProgressStoreContract`: the suite every store adapter runs, assembled from its parts.
 *
 * @module
 */

/** Options for {@link describeProgressStoreContract}. */
export interface StoreContractOptions {
  /**
   * Runs of the model-based test (each run builds a fresh harness). `FC_NUM_RUNS` overrides it.
   * @default 100
   */
  numRuns?: number | undefined;
  /**
   * How many operations the concurrency tests start at once: the appends of the "concurrent appends"
   * test, the creates of bulk set-ups, and (capped at 10) the bursts of the model-based test. Lower it
   * for a store whose connection pool is small.
   * @default 50
   */
  concurrency?: number | undefined;
}

const STORE_CONTRACT_OPTIONS = { numRuns: integer(100, 1), concurrency: integer(50, 2) };

/** The defaults of {@link StoreContractOptions}. */
export const STORE_CONTRACT_DEFAULTS: Readonly<Resolved<StoreContractOptions>> = Object.freeze(
  defaultsOf(STORE_CONTRACT_OPTIONS),
);

/**
 * Declares the {@link ProgressStore} contract as a vitest `describe` block: focused tests (one behaviour
 * each) and a model-based test that runs random command sequences, concurrent bursts included, against a
 * simple model. Every store of Finishline passes it; an adapter runs it from its own test file. Requires
 * the optional peer dependencies `vitest` and `fast-check`.
 *
 * The suite assumes nothing in-memory: it waits (boundedly) for change-feed deliveries, shares no state
 * between tests, and is deterministic given the fast-check seed (`FC_SEED`).
 *
 * @example
 * ```ts
 * // my-store.test.ts, in the adapter's package
 * import { describeProgressStoreContract, ManualClock } from '@finishline/core/testing';
 *
 * describeProgressStoreContract('my-store', async () => {
 *   const clock = new ManualClock();
 *   const store = await openMyStore({ clock: clock.now }); // fresh and empty
 *   return { store, clock, close: () => store.close() };
 * }, { numRuns: 100, concurrency: 20 });
 * ```
 */
export function describeProgressStoreContract(
  name: string,
  harness: ProgressStoreHarnessFactory,
  options: StoreContractOptions = {},
): void {
  const resolved = resolveOptions('describeProgressStoreContract', STORE_CONTRACT_OPTIONS, options);
  describe(`ProgressStore contract: ${name}`, () => {
    describe('behaviours', () => {
      let current: ProgressStoreHarness | undefined;
      beforeEach(async () => {
        current = await harness();
      });
      afterEach(async () => {
        const closing = current;
        current = undefined;
        await closing?.close();
      });
      const running = (): ProgressStoreHarness => {
        if (current === undefined) throw new Error('The store harness is not ready (used outside a test?)');
        return current;
      };
      const context: ContractContext = {
        get store() {
          return running().store;
        },
        get clock() {
          return running().clock;
        },
        options: resolved,
      };
      describeTaskContract(context);
      describeEventContract(context);
      describeLogContract(context);
      describeLeaseContract(context);
      describeFenceContract(context);
      describeFeedContract(context);
      describeLifecycleContract(context);
    });
    describeModelContract(harness, resolved);
  });
}
