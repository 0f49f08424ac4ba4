/**
 * The limits and defaults every store shares (see `ProgressStore`), in a module of their own that
 * imports nothing: input validation reads them, and the store interface re-exports them.
 *
 * @module
 */

/** Defaults shared by every store, so their behaviour does not drift. */
export const STORE_DEFAULTS = /* @__PURE__ */ Object.freeze({
  /** {@link ListTasksQuery.limit} */
  listLimit: 50,
  maxListLimit: 1000,
  /** {@link ProgressStore.readEvents} `limit` */
  readLimit: 1000,
  maxReadLimit: 10_000,
  /** {@link ReapOptions.limit} */
  reapLimit: 100,
  maxReapLimit: 1000,
  /** {@link PurgeOptions.limit} */
  purgeLimit: 500,
  maxPurgeLimit: 5000,
  /** Largest `taskIds` array for {@link ProgressStore.latestSeqs}. */
  maxLatestSeqsIds: 1000,
});
