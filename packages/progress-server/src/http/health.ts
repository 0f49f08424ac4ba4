/**
 * The health report of a replica: the change feed's state as the health check reads it.
 *
 * @module
 */
import type { ChangeFeed } from '@finishline/core';

/**
 * The state of the store's change feed as the health check sees it. Feeds that cannot lose their
 * connection (in-memory, SQLite) report `connected: true` and `lastError: null`.
 */
export interface StoreHealth {
  /** Whether the feed's connection to the store is up (the Postgres `LISTEN` connection). */
  connected: boolean;
  /** The feed's last background error message, or `null`. */
  lastError: string | null;
}

/**
 * What {@link ProgressServer.health} reports, and what `GET {basePath}/healthz` answers (200 when `ok`,
 * else 503). It carries counts only, never task data, because the route is unauthenticated.
 */
export interface ServerHealth {
  /** `true` when the replica can serve: not shutting down and its store feed is connected. */
  ok: boolean;
  /** This replica's id. */
  serverId: string;
  /** `true` once `close()` was called. */
  closing: boolean;
  /** The store's change feed. */
  store: StoreHealth;
  /** Open WebSocket connections (kept while the store is down: they catch up when it returns). */
  sockets: number;
  /** Running tasks this replica owns (and renews the leases of). */
  ownedTasks: number;
  /** Tasks followed by at least one local socket. */
  followedTasks: number;
}

/**
 * Reads `feed.health()` when the feed has one (the Postgres feed: `{ connected, lastError }`); never
 * throws, and a feed whose `health()` throws counts as disconnected.
 */
export function readStoreHealth(feed: ChangeFeed): StoreHealth {
  const candidate = (feed as { health?: unknown }).health;
  if (typeof candidate !== 'function') return { connected: true, lastError: null };
  try {
    const report = (candidate as () => unknown).call(feed) as
      | { connected?: unknown; lastError?: unknown }
      | undefined;
    const connected = report?.connected !== false;
    const lastError = describe(report?.lastError);
    return { connected, lastError };
  } catch (error) {
    return { connected: false, lastError: describe(error) ?? 'health() failed' };
  }
}

function describe(value: unknown): string | null {
  if (value === undefined || value === null) return null;
  if (value instanceof Error) return value.message;
  if (typeof value === 'string') return value;
  if (typeof value === 'object' && typeof (value as { message?: unknown }).message === 'string') {
    return (value as { message: string }).message;
  }
  return String(value);
}
