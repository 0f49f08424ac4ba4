/**
 * What the server shares with each of its sockets: its options, hooks, hub, ack writer, metrics,
 * logger, per-principal limits and store epoch.
 *
 * @module
 */
import type { RoundTripPool } from '@finishline/core/internal';
import type { Principal } from '../auth.js';
import type { Authenticator } from '../authenticator.js';
import type { AckWriter } from '../hub/ack-writer.js';
import type { StoreEpoch } from '../hub/store-epoch.js';
import type { TaskHub } from '../hub/task-hub.js';
import type { ProgressLogger } from '../logger.js';
import type { ServerMetrics } from '../metrics.js';
import type { ResolvedServerOptions } from '../options.js';
import type { PrincipalLimits } from '../principal-limits.js';

/** The server's parts a socket uses. */
export interface SocketServices<P extends Principal> {
  readonly options: ResolvedServerOptions<P>;
  readonly auth: Authenticator<P>;
  /** The hub: every subscription's events (backlog, gap repair, live) come from it. */
  readonly hub: TaskHub;
  readonly acks: AckWriter;
  readonly metrics: ServerMetrics;
  readonly logger: ProgressLogger;
  /** Per-principal socket and subscription counts, shared by the server's connections. */
  readonly limits: PrincipalLimits;
  /** The store's epoch, announced in `hello` and snapshots to version-2 sockets. */
  readonly epoch: StoreEpoch;
  /**
   * How long terminal acks take on this server's sockets, one vote per principal: a socket's first terminal
   * re-send waits at least its own round-trip timeout, or before its first ack, the pool's (round-trip-estimate.ts).
   */
  readonly roundTrips: RoundTripPool;
}
