/**
 * The server's Prometheus metrics (prom-client): one registry per server, counters and gauges named in
 * docs/operations.md.
 *
 * @module
 */
import type { ChangeFeed } from '@finishline/core';
import { invalidOption } from '@finishline/core/internal';
import { Counter, Gauge, Histogram, type Metric, Registry } from 'prom-client';
import type { AuthAttemptVia } from './authenticator.js';

/**
 * What a change feed with a safety-net poll may expose so the server can report how much it caught:
 * `stats()` (or a `stats` object) with a monotonic count of events found by the poll rather than by a
 * push notification, under either name (`@finishline/postgres` reports `missedByNotifications`). Feeds
 * without a poll simply omit it.
 */
export interface SafetyNetStats {
  /** Events the safety-net poll found that no notification had announced (monotonic). */
  safetyNetEvents?: number;
  /** The same count, as the Postgres change feed names it. */
  missedByNotifications?: number;
}

/** Why the server restarted a subscription's stream (label `reason` of the resync counter). */
export type ResyncReason = 'resubscribe' | 'gap' | 'replay_limit' | 'cursor_ahead' | 'epoch' | 'run';

/**
 * Why a Server-Sent Events stream ended (label `reason` of `sse_streams_closed_total`).
 *
 * `finished`: its terminal frame was written; `client_left`: the connection closed or failed from the
 * client's side (also before the stream started); `stalled`: its reader stopped reading for
 * `sseStallTimeoutMs`; `expired`: its credential's `expiresAt` passed; `lifetime`: it was open for
 * `sseStreamLifetimeMs` (the client resumes); `shutdown`: the server's `close()`;
 * `task_gone`: the task is no longer in the store (after a restore, say); `read_failed`: a store read
 * failed (the client resumes); `hook_timeout`: the `authorize` hook, asked again of the task a new
 * epoch's (or a new run's) load read, did not answer within `upgradeTimeoutMs` (logged at `warn`, counted
 * in `handler_errors_total`; the client's reconnect asks it again); `max_queued_bytes`: its reader stopped
 * reading and the page it would hold took its principal past `maxQueuedBytesPerPrincipal` (logged at
 * `info`; the client resumes); `internal`: a bug in the server, logged at `error` and counted in
 * `handler_errors_total` (the client resumes).
 */
export type SseStreamEndReason =
  | 'finished'
  | 'client_left'
  | 'stalled'
  | 'expired'
  | 'lifetime'
  | 'shutdown'
  | 'task_gone'
  | 'read_failed'
  | 'hook_timeout'
  | 'max_queued_bytes'
  | 'internal';

/**
 * The server's Prometheus metrics, on the caller's registry or a new one. Names carry the configured
 * prefix (default `finishline_`):
 *
 * | metric | type | meaning |
 * |---|---|---|
 * | `sockets` | gauge | open WebSocket connections |
 * | `subscriptions` | gauge | tasks followed, summed over sockets |
 * | `resumes_total` | counter | subscribes with `afterSeq > 0`, and Server-Sent Events streams opened with a cursor above 0 (`Last-Event-ID` or `afterSeq`): a watcher resuming |
 * | `resyncs_total{reason}` | counter | streams restarted, socket subscriptions and Server-Sent Events streams alike: `resubscribe` (client asked again; sockets only), `gap` (server-side catch-up), `replay_limit` (backlog too long, snapshot sent), `cursor_ahead` (the subscriber's cursor is beyond the task's seq: a reset snapshot sent), `epoch` (the store's epoch changed under the server, or an SSE stream resumed from an id of another epoch: a reset snapshot sent), `run` (the task's id was purged and created again, or its task is gone, under the stream: a reset snapshot of the new run sent, or `task_not_found`) |
 * | `events_sent_total` | counter | event frames written, to sockets and Server-Sent Events streams |
 * | `snapshots_sent_total` | counter | snapshot frames written, to sockets (coalesced progress included) and Server-Sent Events streams |
 * | `terminal_retries_total` | counter | terminal frames re-sent for lack of an ack |
 * | `terminal_ack_latency_seconds` | histogram | first send of a terminal frame → its ack, per socket |
 * | `unacked_terminal_events` | gauge | terminal frames sent and not yet acknowledged |
 * | `frames_rejected_total{code}` | counter | client frames refused, by error code |
 * | `frames_dropped_total{type}` | counter | answers and heartbeats not written because the socket's buffer was above `highWaterMarkBytes` (a peer that stopped reading or reads too slowly), by frame type: `pong`, `error`, `hello`, `heartbeat` |
 * | `upgrades_rejected_total{code}` | counter | upgrades refused (auth, origin, protocol) |
 * | `connections_dropped_total{reason}` | counter | connections ended before they authenticated: `pending_cap` (their address had too many unauthenticated connections; the oldest goes), `pending_total_cap` (all addresses together had too many, `maxPendingConnections`; the oldest goes), `upgrade_timeout` (the upgrade did not complete within `upgradeTimeoutMs`) |
 * | `auth_rate_limited_total{via}` | counter | authentication attempts refused because their address spent its budget of failed ones (`authRateLimitPerAddressPerSecond`; no hook ran), by {@link AuthAttemptVia}: `http` (429, Server-Sent Events streams included), `upgrade` (429, or close 4008 for a socket of a `wss` you pass), `auth_frame` (`rate_limited`, close 4008) |
 * | `principal_limits_total{limit}` | counter | refusals at a per-principal cap: `sockets` (`maxSocketsPerPrincipal`), `subscriptions` (`maxSubscriptionsPerPrincipal`), `rate` (an HTTP API request over `rateLimitPerPrincipalPerSecond`, or while the principal's unread answers hold more than 32 MiB; refused frames count in `frames_rejected_total`) |
 * | `unread_answers_refused_total` | counter | HTTP API requests refused 429 because the answers of all principals not yet handed to the network held more than `maxUnreadAnswerBytes` (a principal's own 32 MiB counts in `principal_limits_total{limit="rate"}`) |
 * | `sse_streams_closed_total{reason}` | counter | Server-Sent Events streams ended, by {@link SseStreamEndReason}: `finished`, `client_left`, `stalled`, `expired`, `lifetime`, `shutdown`, `task_gone`, `read_failed`, `hook_timeout` (the `authorize` hook did not answer within `upgradeTimeoutMs` when the stream started over), `max_queued_bytes` (a stalled stream's held page would take its principal past `maxQueuedBytesPerPrincipal`, or all principals past `maxQueuedBytesTotal`), `internal` (a bug: see the error log) |
 * | `handler_errors_total` | counter | unexpected errors caught in a handler |
 * | `store_errors_total` | counter | store calls that failed |
 * | `leases_reaped_total` | counter | expired leases turned into `interrupted` by this replica |
 * | `safety_net_events_total` | counter | events found by the change feed's safety-net poll (if the feed reports it) |
 */
export class ServerMetrics {
  /** The registry holding these metrics. */
  readonly registry: Registry;
  readonly sockets: Gauge;
  readonly subscriptions: Gauge;
  readonly resumes: Counter;
  readonly resyncs: Counter<'reason'>;
  readonly eventsSent: Counter;
  readonly snapshotsSent: Counter;
  readonly terminalRetries: Counter;
  readonly terminalAckLatency: Histogram;
  readonly unackedTerminals: Gauge;
  readonly framesRejected: Counter<'code'>;
  readonly framesDropped: Counter<'type'>;
  readonly upgradesRejected: Counter<'code'>;
  readonly connectionsDropped: Counter<'reason'>;
  readonly principalLimits: Counter<'limit'>;
  readonly authRateLimited: Counter<'via'>;
  readonly unreadAnswersRefused: Counter;
  readonly sseStreamsClosed: Counter<'reason'>;
  readonly handlerErrors: Counter;
  readonly storeErrors: Counter;
  readonly leasesReaped: Counter;
  readonly safetyNetEvents: Counter;
  readonly #names: string[] = [];

  constructor(options: { registry: Registry | undefined; prefix: string; feed: ChangeFeed }) {
    this.registry = options.registry ?? new Registry();
    const p = options.prefix;
    // Built unregistered, then registered together below.
    const registers: Registry[] = [];
    const built: Metric[] = [];
    const track = <T extends Metric>(metric: T, name: string): T => {
      this.#names.push(name);
      built.push(metric);
      return metric;
    };
    const gauge = (name: string, help: string) =>
      track(new Gauge({ name: `${p}${name}`, help, registers }), `${p}${name}`);
    const counter = (name: string, help: string) =>
      track(new Counter({ name: `${p}${name}`, help, registers }), `${p}${name}`);

    this.sockets = gauge('sockets', 'Open WebSocket connections');
    this.subscriptions = gauge('subscriptions', 'Tasks followed, summed over sockets');
    this.resumes = counter(
      'resumes_total',
      'Watchers resuming: subscribes with afterSeq > 0 and Server-Sent Events streams opened with a cursor above 0',
    );
    this.resyncs = track(
      new Counter({
        name: `${p}resyncs_total`,
        help: 'Subscription streams restarted, by reason',
        labelNames: ['reason'] as const,
        registers,
      }),
      `${p}resyncs_total`,
    );
    this.eventsSent = counter(
      'events_sent_total',
      'Event frames written to sockets and Server-Sent Events streams',
    );
    this.snapshotsSent = counter(
      'snapshots_sent_total',
      'Snapshot frames written to sockets and Server-Sent Events streams',
    );
    this.terminalRetries = counter('terminal_retries_total', 'Terminal frames re-sent for lack of an ack');
    this.terminalAckLatency = track(
      new Histogram({
        name: `${p}terminal_ack_latency_seconds`,
        help: 'Time from the first send of a terminal frame to its acknowledgement',
        buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
        registers,
      }),
      `${p}terminal_ack_latency_seconds`,
    );
    this.unackedTerminals = gauge('unacked_terminal_events', 'Terminal frames sent and not yet acknowledged');
    this.framesRejected = track(
      new Counter({
        name: `${p}frames_rejected_total`,
        help: 'Client frames refused, by error code',
        labelNames: ['code'] as const,
        registers,
      }),
      `${p}frames_rejected_total`,
    );
    this.framesDropped = track(
      new Counter({
        name: `${p}frames_dropped_total`,
        help: 'Answers and heartbeats not written to a socket above the high-water mark, by frame type',
        labelNames: ['type'] as const,
        registers,
      }),
      `${p}frames_dropped_total`,
    );
    this.upgradesRejected = track(
      new Counter({
        name: `${p}upgrades_rejected_total`,
        help: 'WebSocket upgrades refused, by error code',
        labelNames: ['code'] as const,
        registers,
      }),
      `${p}upgrades_rejected_total`,
    );
    this.connectionsDropped = track(
      new Counter({
        name: `${p}connections_dropped_total`,
        help: 'Connections ended before they authenticated, by reason',
        labelNames: ['reason'] as const,
        registers,
      }),
      `${p}connections_dropped_total`,
    );
    this.principalLimits = track(
      new Counter({
        name: `${p}principal_limits_total`,
        help: 'Refusals at a per-principal cap, by limit',
        labelNames: ['limit'] as const,
        registers,
      }),
      `${p}principal_limits_total`,
    );
    this.authRateLimited = track(
      new Counter({
        name: `${p}auth_rate_limited_total`,
        help: "Authentication attempts refused for their address's spent failed-attempt budget, by where they came",
        labelNames: ['via'] as const,
        registers,
      }),
      `${p}auth_rate_limited_total`,
    );
    this.unreadAnswersRefused = counter(
      'unread_answers_refused_total',
      "HTTP API requests refused because all principals' unread answers held more than maxUnreadAnswerBytes",
    );
    this.sseStreamsClosed = track(
      new Counter({
        name: `${p}sse_streams_closed_total`,
        help: 'Server-Sent Events streams ended, by reason',
        labelNames: ['reason'] as const,
        registers,
      }),
      `${p}sse_streams_closed_total`,
    );
    this.handlerErrors = counter('handler_errors_total', 'Unexpected errors caught in a handler');
    this.storeErrors = counter('store_errors_total', 'Store calls that failed');
    this.leasesReaped = counter(
      'leases_reaped_total',
      'Expired leases turned into interrupted by this replica',
    );

    const feed = options.feed;
    let reported = 0;
    this.safetyNetEvents = track(
      new Counter({
        name: `${p}safety_net_events_total`,
        help: "Events found by the change feed's safety-net poll rather than a notification",
        registers,
        collect() {
          const current = readSafetyNetEvents(feed);
          if (current !== undefined && current > reported) {
            this.inc(current - reported);
            reported = current;
          }
        },
      }),
      `${p}safety_net_events_total`,
    );

    // None is registered when a name is taken: registered one by one, a clash at the nth name left the
    // ones before it in the registry, and a retry in the same process failed on them.
    const taken = this.#names.find((name) => this.registry.getSingleMetric(name) !== undefined);
    if (taken !== undefined) {
      throw invalidOption(
        'ProgressServer',
        `the registry already holds a metric named ${taken}: pass another metricsPrefix (now ${JSON.stringify(p)})`,
      );
    }
    for (const metric of built) this.registry.registerMetric(metric);
  }

  /** Removes these metrics from the registry (so a new server can register the same names). */
  unregister(): void {
    for (const name of this.#names) this.registry.removeSingleMetric(name);
  }
}

/** Reads the safety-net count ({@link SafetyNetStats}) from a feed that exposes it; never throws. */
function readSafetyNetEvents(feed: ChangeFeed): number | undefined {
  try {
    const candidate = (feed as { stats?: unknown }).stats;
    const stats = typeof candidate === 'function' ? (candidate as () => unknown).call(feed) : candidate;
    const counters = stats as SafetyNetStats | undefined;
    const value = counters?.safetyNetEvents ?? counters?.missedByNotifications;
    return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
  } catch {
    return undefined;
  }
}
