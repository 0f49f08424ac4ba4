/**
 * `@finishline/core/testing`: what adapters and applications need to test against Finishline — the
 * `ProgressStore` contract suite, a manual clock, fast-check arbitraries for frames and events, and the
 * shared property-test settings. Needs the optional peer dependencies `vitest` and `fast-check`; the
 * main entry never loads this one.
 *
 * @packageDocumentation
 */

export {
  clientFrameArbitrary,
  serverFrameArbitrary,
  taskEventArbitrary,
  taskViewArbitrary,
} from './frame-arbitraries.js';
export { ManualClock } from './manual-clock.js';
export {
  DEFAULT_FC_SEED,
  propertyParams,
  propertyRuns,
  propertySeed,
  propertyTimeoutMs,
} from './property-config.js';
export { expectSameData } from './same-data.js';
export type {
  ProgressStoreHarness,
  ProgressStoreHarnessFactory,
  StoreContractOptions,
} from './store-contract.js';
export { describeProgressStoreContract, STORE_CONTRACT_DEFAULTS } from './store-contract.js';
