import { randomUUID } from 'node:crypto';
import type { Server as HttpServer } from 'node:http';
import { hostname } from 'node:os';
import type { Clock, ProgressStore } from '@finishline/core';
import { LIMITS } from '@finishline/core';
import type { ResolvedOptionsOf, TerminalRetryOptions } from '@finishline/core/internal';
import {
  boolean,
  defaultsOf,
  func,
  idProblem,
  integer,
  invalidOption,
  ofType,
  option,
  required,
  resolveOptions,
  storeClockOption,
  TERMINAL_RETRY_OPTION,
} from '@finishline/core/internal';
import type { Registry } from 'prom-client';
import type { WebSocketServer } from 'ws';
import type { ClientAddressHook } from './address-auth-limits.js';
import type {
  AllowedOrigins,
  AuthenticateHook,
  AuthenticateTokenHook,
  AuthorizeHook,
  Principal,
} from './auth.js';
import { isRequestPath, ownerOnly } from './auth.js';
import type { ProgressLogger } from './logger.js';
import { guardLogger, silentLogger } from './logger.js';

/**
 * The server's options: the public interface below carries their documentation, the table after it
 * their defaults and checks (see the options toolkit in `@finishline/core/internal`). Over 400 lines
 * because the interface documents fifty options (docs/api.md is generated from it); the code is the
 * table and one resolver.
 *
 * @module
 */

/**
 * Options of {@link ProgressServer}. Only `store` and one of `authenticate` / `authenticateToken` are
 * required. Where the server listens is one of: `server` (attach to your `http.Server` at `path`), `wss`
 * (your `WebSocketServer`), or neither (you call `handleUpgrade` yourself, or use
 * `ProgressServer.listen`, which creates an `http.Server`).
 */
export interface ProgressServerOptions<P extends Principal = Principal> {
  /** Where tasks and events live. The server never closes it. */
  store: ProgressStore;
  /**
   * Establishes the principal of an upgrade or HTTP request from its headers or cookies; `null` when it
   * has none. At least one of `authenticate` and `authenticateToken` is required.
   * @default none
   */
  authenticate?: AuthenticateHook<P> | undefined;
  /**
   * Establishes the principal from a token: a first-frame `auth` message (then an upgrade that
   * `authenticate` does not recognise is accepted, and the socket must send `auth` within
   * `authTimeoutMs`), an HTTP `Authorization: Bearer` header, or the query parameter `tokenQueryParam`.
   * @default none (first-frame authentication disabled)
   */
  authenticateToken?: AuthenticateTokenHook<P> | undefined;
  /**
   * May `principal` watch or cancel `task`?
   * @default the principal owns the task (`task.owner === principal.id`)
   */
  authorize?: AuthorizeHook<P> | undefined;
  /**
   * An `http.Server` to attach to: the server handles its `upgrade` events for `path` only and leaves
   * every other path to other listeners. Not closed by `close()`.
   * @default none
   */
  server?: HttpServer | undefined;
  /**
   * The WebSocket path on `server`, and the HTTP API's default base path. Does not end with `/`, but
   * `'/'` itself, which puts the HTTP API at the root (base path `''`). Requests are matched by their path
   * as sent, so it holds only what a URL carries as it is: a non-ASCII character or a space
   * percent-encoded (`'/progr%C3%A8s'` for `/progrès`), no query or fragment, no `.` or `..` segment
   * (refused at construction since 7 December 2026: before, such a path matched no request).
   * @default '/progress'
   */
  path?: string | undefined;
  /**
   * A `WebSocketServer` you created: the server handles its `connection` events. Authentication and the
   * Origin check then happen after the upgrade (refusals close the socket with 4001 / 4003 instead of an
   * HTTP status). `maxPayloadBytes` still applies, checked by the server as each message is decoded: a
   * larger message is answered `frame_too_large` as an invalid frame (`maxInvalidFrames` of them close the
   * socket with 1008). Your server's own `maxPayload` (ws: 100 MiB by default) bounds what is received
   * at all: a message above it closes the socket with 1009; set it to `maxPayloadBytes` (the server warns
   * when it is larger: ws holds each message whole, from sockets not authenticated yet too). Use ws 8.23 or later, with `maxPendingAutoPongs` at
   * its default: without that bound a client sending pings and reading nothing grows the process's memory
   * without limit (the server logs a warning). Unless it has its own `handleProtocols`, the server
   * sets one that selects the newest protocol version offered, as on its own upgrades, and puts back what was
   * there when `close()` begins. Not closed by `close()`.
   * @default none
   */
  wss?: WebSocketServer | undefined;
  /**
   * Browser origins allowed to connect and to call the HTTP API; see {@link AllowedOrigins}. `'*'` is
   * insecure with cookies.
   * @default 'same-origin'
   */
  allowedOrigins?: AllowedOrigins | undefined;
  /**
   * Read a token from this URL query parameter at the upgrade (passed to `authenticateToken`). Tokens in
   * URLs end up in proxy and access logs, so this is off unless you name the parameter.
   * @default false
   */
  tokenQueryParam?: string | false | undefined;
  /**
   * Whether a task the principal may not watch is answered `forbidden` (WebSocket) / 403 (HTTP). By
   * default it gets exactly the answer of a missing task (`task_not_found` / 404, same message), so
   * application-chosen ids (`taint-42`) do not reveal which tasks exist; `authorize` is then asked about a
   * missing task too (a stand-in whose `owner` is `''`, its answer ignored), so that the answer does not
   * come sooner for it. Turn it on only when task ids are unguessable or not secret and clients need to
   * tell the two apart.
   * @default false
   */
  revealTaskExistence?: boolean | undefined;
  /**
   * Who sees the details of `GET {basePath}/healthz` (server id, which embeds the hostname and pid,
   * store feed state and its last error, which may name the database host or user, and this replica's
   * socket and task counts, all principals together). Anyone else gets only `{ "ok": true|false }` (the
   * status code is the same either way). Only a request with an `Authorization` or `Cookie` header is run
   * through the hooks for it: a probe without one never waits on `authenticate` nor spends its address's
   * `authRateLimitPerAddressPerSecond` budget, and one with them waits for the hooks at most 500 ms (then
   * gets `{ "ok": … }`).
   * - `'authenticated'`: any request with valid credentials, every end user of the application included;
   * - a predicate: the authenticated principals it accepts (your operators, say
   *   `(principal) => principal.roles.includes('ops')`; one that throws accepts no one);
   * - `'none'`: no one (read `progress.health()` in your own admin route instead);
   * - `'public'`: everyone (for a probe endpoint that is not reachable from outside).
   * @default 'authenticated'
   */
  healthDetails?: HealthDetails<P> | undefined;
  /**
   * How long an unauthenticated socket has to send its `auth` frame, and have its token checked by
   * `authenticateToken`, before it is closed with 4004 (counted from the socket's opening).
   * Keep it well below the clients' `connectTimeoutMs` (10 s by default): a client without a token stops
   * on that 4004 (the `finishline` CLI exits 4), but only if it comes before the client gives up waiting
   * for `hello` and reconnects, which it then did for ever.
   * @default 5000
   */
  authTimeoutMs?: number | undefined;
  /**
   * Longest time an upgrade may take from its request to the open WebSocket (the `authenticate` hook
   * included); a slower one has its socket destroyed. Node's `headersTimeout` stops applying once the
   * upgrade headers are complete, so without this a client (or a hook) that never finishes holds a
   * descriptor for ever. A socket of a `wss` you pass has this long for its authentication hooks to
   * answer, from its `connection` event; a slower one is closed with 1011. It bounds the same hooks
   * (`authorize` too) for each HTTP API request: one they have not answered within it is answered 504
   * `timeout`; an event stream whose `authorize` is asked again (it starts over in a new epoch) ends; a
   * socket's `subscribe` (or a renewal's re-check of a followed task) whose `authorize` has not answered
   * within it gets an `error` frame `timeout`, and the subscription ends. A renewal (an `auth` frame on
   * an open socket) whose `authenticateToken` has not answered gets `timeout` too; the socket keeps its credential.
   * @default 10000
   */
  upgradeTimeoutMs?: number | undefined;
  /**
   * Most connections from one remote address (an IPv6 client: from one /64, the block a client is given
   * and may send from any address of) that have not authenticated yet: accepted TCP connections without a
   * request, and kept-alive ones between requests whose latest request did not authenticate (both only on the server
   * `ProgressServer.listen` creates), upgrades being checked, and sockets
   * waiting for their `auth` frame (those of a `wss` you pass too). Over the cap the address's **oldest**
   * such connection is destroyed, so silent connections cannot exhaust descriptors and a new client still
   * gets in. The address is the TCP peer's (`clientAddress` does not apply: a connection counts before any
   * header names its client), so behind a reverse proxy every client shares the proxy's cap: set it to
   * `maxPendingConnections` there and cap connections per client at the proxy.
   * @default 100
   */
  maxPendingConnectionsPerAddress?: number | undefined;
  /**
   * Most connections that have not authenticated yet (as counted by `maxPendingConnectionsPerAddress`),
   * all addresses together. Over it the **oldest** of them, whatever its address, is destroyed (counted
   * as `connections_dropped_total{reason="pending_total_cap"}`): the per-address cap alone let clients
   * spread over many addresses hold any number of silent sockets. A legitimate client is pending only
   * for its authentication's round trip, so even a burst of reconnects after a replica's loss (at
   * `reconnectsPerSecond`, 20,000/s by default) stays well below the default, while silent sockets, the
   * oldest, are the ones dropped.
   * @default 10000
   */
  maxPendingConnections?: number | undefined;
  /**
   * Sustained failed authentication attempts per second from one remote address (an IPv6 client: its
   * /64), with a burst of 50 seconds of it (1,000 at the default). An attempt is a run of the `authenticate`
   * / `authenticateToken` hooks for an upgrade, an `auth` frame or an HTTP request; it is paid for only if
   * it establishes no principal (credentials refused, or none where `authenticate` was asked; an upgrade
   * left to the socket's `auth` frame is paid back when the frame authenticates, unless it carried an
   * `Authorization` header: a refused password is not paid back by another account's token), so clients
   * with valid credentials spend none of it, however many share an address (a NAT, a proxy); they are
   * refused only once failures from their address spent it. Past the budget the hooks do not run: HTTP
   * requests and upgrades are answered 429 `rate_limited` with `Retry-After`, an `auth` frame with
   * `rate_limited` and close 4008 (a socket of a `wss` you pass: close 4008). The address is the one
   * `clientAddress` gives, by default the connection's peer: behind a reverse proxy every client has the
   * proxy's, and one client's bad credentials spent the budget of all, so set `clientAddress` there.
   * An integer from 0 to 1,000,000; 0 turns the limit off.
   * @default 20
   */
  authRateLimitPerAddressPerSecond?: number | undefined;
  /**
   * How a request's client address is found, for `authRateLimitPerAddressPerSecond`: called at most once per HTTP
   * request (Server-Sent Events streams included) and WebSocket upgrade (a socket's `auth` frames count
   * against its upgrade's answer); a string is the address (an IPv6 one counts by its /64), `undefined`
   * means the connection's peer. Behind reverse proxies that append to `X-Forwarded-For`, use
   * `forwardedClientAddress({ trustedProxies: n })` (exported by this package), and only when no request can reach the server
   * around them (a client could otherwise pick its address, and a fresh budget, with the header). A hook
   * that throws, or returns anything but `undefined` or a string of 1-256 characters (a promise too: it
   * must answer synchronously; an `async` hook's rejection is caught), falls back to the peer address
   * (logged at `warn`, once): the request is answered as without the hook. The caps on connections
   * not authenticated yet (`maxPendingConnectionsPerAddress`) count TCP peers, before any request: the
   * hook does not apply to them.
   * @default the connection's peer address (`request.socket.remoteAddress`)
   */
  clientAddress?: ClientAddressHook | undefined;
  /**
   * This replica's id: sent in `hello`, used as the lease owner of the tasks it runs. Letters, digits
   * and `_ . : @ / -`, at most 128 characters, and not `__proto__`, `constructor` or `prototype` (the
   * rule of task ids: clients refuse a `hello` naming one); else `invalid_input` at construction.
   * @default `${hostname}-${pid}-${random}`
   */
  serverId?: string | undefined;
  /**
   * Time source for rate limits, retries and heartbeats (timers stay real), in epoch milliseconds. Read
   * in whole milliseconds: a fractional time is rounded down (frames carry only integers), and a call
   * that returns no time (`NaN`, a negative number) fails with `internal`.
   * @default Date.now
   */
  clock?: Clock | undefined;
  /**
   * Structured logs (pino-compatible). A logger that throws, or whose method returns a promise that
   * rejects, is ignored.
   * @default silent
   */
  logger?: ProgressLogger | undefined;
  /**
   * prom-client registry for the metrics; exposed as `server.metrics.registry`.
   * @default a new Registry
   */
  registry?: Registry | undefined;
  /**
   * Prefix of every metric name (use distinct prefixes for two servers sharing a registry).
   * @default 'finishline_'
   */
  metricsPrefix?: string | undefined;
  /**
   * Largest incoming WebSocket message, in bytes; larger ones close the socket with 1009 (on a `wss` you
   * pass whose `maxPayload` is larger: answered `frame_too_large`, an invalid frame). At least 1024.
   * @default 65536
   */
  maxPayloadBytes?: number | undefined;
  /**
   * Most tasks one socket may follow; one more gets `too_many_subscriptions`. At most
   * 885: a heartbeat names every task the socket follows, and above
   * that its worst case is larger than a frame may be (`LIMITS.maxFrameBytes`), so clients refuse it.
   * @default 100
   */
  maxSubscriptionsPerSocket?: number | undefined;
  /**
   * Most sockets one principal may have open on this replica; one more is sent `too_many_sockets` and
   * closed with 4009.
   * @default 100
   */
  maxSocketsPerPrincipal?: number | undefined;
  /**
   * Most tasks one principal may follow on this replica, summed over its sockets; one more gets
   * `too_many_subscriptions`. Also the most requests of the HTTP API one principal may have in progress
   * (authenticated, not answered yet) on this replica; one more is answered 429 `rate_limited` with
   * `Retry-After: 1`.
   * @default 1000
   */
  maxSubscriptionsPerPrincipal?: number | undefined;
  /**
   * Sustained frames per second one principal may send over all its sockets together (each frame also
   * pays the per-socket limit); the burst is the larger of `maxSubscriptionsPerPrincipal` and one second of
   * this rate. Refusals count as rate-limit
   * violations of the socket that sent them (4008 if they go on). Each request of the HTTP API takes a
   * token of the same budget (429 `rate_limited`, `Retry-After: 1`, when there is none); a list of tasks
   * (`GET …/tasks`), which runs `authorize` for each task it lists, takes one per 50 tasks of its `limit`
   * (rounded up; at most the burst).
   * @default 500
   */
  rateLimitPerPrincipalPerSecond?: number | undefined;
  /**
   * Most store reads for subscriptions, Server-Sent Events streams (task loads and catch-up reads) and the
   * HTTP API's routes (a task, a page of events, a list) in flight at once, all principals together. Keep it below the store's pool size, so appends and live delivery always find a connection.
   * @default 4
   */
  catchUpReadConcurrency?: number | undefined;
  /**
   * Most of those reads one principal may have in flight while another principal has reads queued or in
   * flight; principals take turns, so one at its caps only slows itself. A principal alone may use the
   * idle slots but one (`catchUpReadConcurrency - 1`), so a newcomer's first read still starts at once.
   * With a synchronous store (SQLite) a read blocks the event loop, so at most one read of a principal
   * starts per turn of the loop whatever this says.
   * @default 1
   */
  catchUpReadsPerPrincipal?: number | undefined;
  /**
   * Sustained frames per second one socket may send. An `ack` that acknowledges new events is free (its
   * number is bounded by what the server sends); every other frame costs one token.
   * @default 100
   */
  rateLimitPerSecond?: number | undefined;
  /**
   * Burst size of the per-socket rate limit (a reconnecting client resubscribes to all its tasks at
   * once).
   * @default 200
   */
  rateLimitBurst?: number | undefined;
  /**
   * A socket whose frames were refused for exceeding the rate limit in this many violations, with no pause
   * of a second between refusals, is closed with 4008. Refusals within 100 ms of the last counted violation
   * count with it: a batch written before the client could see a refusal (a client subscribing to every
   * task it watches after `hello`) is one violation, or a few, however many frames it holds, and a client
   * that goes on flooding is closed after this many tenths of a second (5 s by default), or sooner once
   * this many times `rateLimitBurst` frames were refused in the streak (10,000 by default), however fast
   * they came.
   * @default 50
   */
  maxRateLimitViolations?: number | undefined;
  /**
   * A socket that sent this many invalid frames is closed with 1008.
   * @default 10
   */
  maxInvalidFrames?: number | undefined;
  /**
   * Longest backlog replayed as events on subscribe; a longer one is answered with a snapshot. At most
   * 10,000.
   * @default 1000
   */
  maxReplayEvents?: number | undefined;
  /**
   * Interval of heartbeat frames (sent in `hello`) and of WebSocket pings; a socket that misses a pong
   * for one interval is terminated (unless its send buffer shrank meanwhile: it is still reading a backlog).
   * At least 10, at most 300000 (5 minutes): clients take at most that from `hello` for their silence deadline, so a
   * longer interval had quiet sockets dropped by their clients between two heartbeats.
   * @default 15000
   */
  heartbeatIntervalMs?: number | undefined;
  /**
   * Longest time a Server-Sent Events stream may wait for its reader: once the connection's buffers are
   * full the stream writes nothing until they drain, and one whose buffers stay full this long is
   * destroyed (the client, if alive, reconnects with `Last-Event-ID`), so a reader that stopped reading
   * for good frees its stream slot (`maxSocketsPerPrincipal`) and connection instead of holding them
   * until it leaves or its credential expires. The default gives a slow mobile reader time to take in
   * one socket buffer (some 16 KiB) while freeing a dead reader's slot within half a minute. An answer of
   * the HTTP API (`httpHandler`) that makes no progress this long (no 64 KiB of it leaves) is dropped the
   * same way: a client that stopped reading an events page held it in memory, and its connection, for ever.
   * A deadline that passed while the server's own event loop stood still (a long synchronous hook, a GC
   * pause, a throttled or frozen container) is waited out once more, the reader judged on a window the
   * server watched: a server stall dropped every busy reader at once.
   * @default 30000
   */
  sseStallTimeoutMs?: number | undefined;
  /**
   * Longest time a Server-Sent Events stream stays open, less a random tenth of it (so streams opened
   * together do not all end together): then the server ends it, and the client reconnects with
   * `Last-Event-ID` and resumes after its last frame (`EventSource` after its `retry`, `@finishline/client`
   * at once). A reader that stopped reading (a suspended process, a frozen tab) is dropped for it after
   * `sseStallTimeoutMs` only once the connection's buffers are full, and a quiet task's heartbeats fill
   * them in weeks: without a bound such a reader kept its slot of `maxSocketsPerPrincipal`, a hub follow and
   * its connection until the task ended or its credential expired. A socket's reader is dropped when it
   * misses a pong; an event stream has no way back for one. 0: no bound.
   * @default 600000
   */
  sseStreamLifetimeMs?: number | undefined;
  /**
   * Most bytes of HTTP API answers the server holds at once, written or waiting to be, all principals
   * together. Each principal holds at most 32 MiB (`MAX_UNREAD_ANSWER_BYTES_PER_PRINCIPAL`, over all of
   * the server's `httpHandler()`s); without a bound over them all, clients of many principals that
   * stopped reading their answers held 32 MiB each. Past it a request is answered 429 `rate_limited` with
   * `Retry-After: 1` (one answer is always sent while the server holds none, however large), counted in
   * the metric `unread_answers_refused_total`.
   * @default 268435456 (256 MiB)
   */
  maxUnreadAnswerBytes?: number | undefined;
  /**
   * Reconnect pace the server asks for: its `hello` tells each client to spread its first retry after
   * a loss over `open sockets / reconnectsPerSecond` seconds (`reconnectDelayMs`), so if this replica
   * dies (or drops every socket at once) its clients reach the survivors at about this rate instead of
   * in one instant. The hint is capped at 30 s and left out at 100 ms or less (the client's own first
   * delay, 100 ms by default, decides then). 0 sends no hint.
   * @default 20000
   */
  reconnectsPerSecond?: number | undefined;
  /**
   * While a socket's `bufferedAmount` is above this many bytes, the server stops writing to it and
   * coalesces its queued progress events into snapshots; answers (`pong`, `error`) and heartbeats
   * falling due meanwhile are dropped. `ws` counts a frame sent as text by its string's `length` (UTF-16
   * units, as Node's streams count strings), not its UTF-8 bytes: frames of CJK text (three bytes a
   * character, one unit) fill up to three times this many bytes before the server stops (held as strings
   * of two bytes a character, shared with the other sockets sending the same events).
   * @default 1048576
   */
  highWaterMarkBytes?: number | undefined;
  /**
   * Most entries queued for one socket while its buffer is above `highWaterMarkBytes` (an event or a
   * snapshot each; a run of `progress` collapsed into one counts once). `item` and terminal events are
   * never dropped or merged, so a client reading slower than its tasks produce items (a slow mobile
   * link on a large batch), or one that stopped reading, made the queue grow without bound until the
   * liveness check noticed; past this bound the socket is terminated instead, and the client reconnects
   * and resumes from its cursor (a backlog longer than `maxReplayEvents` is answered by a snapshot).
   * The default holds some 10 batches' worth of a `maxReplayEvents` replay.
   * @default 10000
   */
  maxQueuedFrames?: number | undefined;
  /**
   * Most bytes of event frames queued for one socket while its buffer is above `highWaterMarkBytes`, or
   * held for a token renewal's re-check (their JSON text in UTF-8 bytes, as sent: until 7 December 2026 its
   * `length`, so CJK text, three bytes a character, was held up to three times the bound; a coalesced
   * progress run and a snapshot count nothing). `maxQueuedFrames` counts
   * entries, and an `item` or a terminal event carries up to 16 KiB: a socket that stopped reading, following
   * five tasks each with a replay of 1,000 such items to catch up, held its own copies of them all, 75 MB,
   * until the liveness check noticed, and a principal's 100 sockets as many. Past this bound the socket
   * is terminated, as past `maxQueuedFrames`. The default holds one `maxReplayEvents` replay of 16 KiB items.
   * @default 16777216 (16 MiB)
   */
  maxQueuedBytes?: number | undefined;
  /**
   * Most bytes of event frames queued or held over all the sockets of one principal on this replica (the
   * sum of what `maxQueuedBytes` weighs on each, in UTF-8 bytes), and held by its Server-Sent Events
   * streams (the page, up to 1 MiB, a stream holds while its reader's buffers are full: a stream whose page would take the
   * principal past this bound ends, counted in `sse_streams_closed_total{reason="max_queued_bytes"}`, and
   * its reader resumes with `Last-Event-ID`). Answers of the HTTP API have their own bound
   * (`maxUnreadAnswerBytes`). `maxQueuedBytes` bounds one socket, and a principal may open
   * `maxSocketsPerPrincipal` of them: its 100 sockets that stopped reading held 16 MiB of frames each, and
   * the events behind them, 1.6 GB or more. The socket whose queue takes the principal past this bound is
   * terminated, as past `maxQueuedBytes` (its log line names this bound); its bytes are given back at once.
   * @default 67108864 (64 MiB)
   */
  maxQueuedBytesPerPrincipal?: number | undefined;
  /**
   * Most bytes of event frames queued or held over every principal's sockets and Server-Sent Events
   * streams on this replica together, counted as `maxQueuedBytesPerPrincipal` counts them (UTF-8 bytes).
   * That bound is per principal, and nothing capped the principals: clients of many principals (an
   * application where anyone may sign up, or one user with many tokens of distinct principals) that
   * stopped reading held 64 MiB each. The socket whose queue takes the total past this bound is
   * terminated, as past `maxQueuedBytes` (its log line names this bound), and a stream whose held page
   * would is ended (`sse_streams_closed_total{reason="max_queued_bytes"}`); their clients resume from their
   * cursors. A socket's queue grows only once `highWaterMarkBytes` are already buffered for it, and live
   * events shared by several sockets count once per socket, so the default is reached only with hundreds
   * of sockets far behind their readers.
   * @default 536870912 (512 MiB)
   */
  maxQueuedBytesTotal?: number | undefined;
  /**
   * How often a congested socket's `bufferedAmount` is checked, in milliseconds.
   * @default 10
   */
  backpressurePollMs?: number | undefined;
  /**
   * Re-send schedule of unacknowledged terminal events. The first delay is `initialDelayMs` or, when
   * longer, the round-trip timeout the server learnt from its terminal acks (TCP's SRTT + 4·RTTVAR).
   * @default TERMINAL_RETRY_DEFAULTS (100 ms, doubling, capped at 5 s)
   */
  terminalRetry?: TerminalRetryOptions | undefined;
  /**
   * Lease length of the tasks this server runs; if the server dies, any replica interrupts them this
   * long after the last renewal. `runBatch` retries a terminal event through a store outage this long too.
   * From 3 to 86,400,000 (a day).
   * @default 15000
   */
  leaseTtlMs?: number | undefined;
  /**
   * How often leases of running tasks are renewed. Must be below `leaseTtlMs`.
   * @default leaseTtlMs / 3
   */
  leaseRenewIntervalMs?: number | undefined;
  /**
   * How often this server reaps expired leases of any replica (`0` disables; keep it on in at least one
   * replica).
   * @default 5000
   */
  reapIntervalMs?: number | undefined;
  /**
   * After a failed store read for live delivery, wait this long before reading again. Also the wait
   * before reading again when the change feed announced a seq the store does not show; after three such
   * retries the announced seq is given up (a late notice of a restored store's previous epoch). And the
   * longest a change is left unread that this process's appends to the task in flight may be (their
   * commits, announced before their replies): an append that hangs commits nothing, and the change may be
   * another writer's. A read
   * that failed with `internal` (a row the store cannot decode), or with an error that is no
   * `ProgressError` (a store breaking its contract), is not retried: it ends the task's subscriptions
   * with `internal`, and the clients resubscribe with their backoff.
   * @default 1000
   */
  storeRetryDelayMs?: number | undefined;
}

/** Who sees the details of `GET {basePath}/healthz`; see {@link ProgressServerOptions.healthDetails}. */
export type HealthDetails<P extends Principal = Principal> =
  | 'authenticated'
  | 'public'
  | 'none'
  | ((principal: P) => boolean | Promise<boolean>);

const isObjectWith =
  (method: string) =>
  (value: unknown): boolean =>
    typeof value === 'object' &&
    value !== null &&
    typeof (value as Record<string, unknown>)[method] === 'function';

const isFunction = (value: unknown): boolean => typeof value === 'function';

/**
 * The largest `maxSubscriptionsPerSocket`: the most subscriptions whose heartbeat still fits in a frame
 * (`LIMITS.maxFrameBytes`, which clients enforce) at worst, every task id of `LIMITS.maxIdLength`
 * characters and every seq and the time at `LIMITS.maxCount`. A heartbeat lists every subscription of the
 * socket, and a client takes a task missing from it for one the server forgot (it subscribes again), so
 * one split over several frames would cost a resubscribe per task left out: the cap keeps it one frame.
 * Ids need no JSON escape (`ID_PATTERN`). 885 with today's limits.
 */
export const MAX_SUBSCRIPTIONS_PER_SOCKET: number = (() => {
  const count = String(LIMITS.maxCount);
  const fixed = `{"type":"heartbeat","time":${count},"seqs":{}}`.length;
  // `"<id>":<seq>`, and a comma between entries.
  const entry = LIMITS.maxIdLength + count.length + 4;
  return Math.floor((LIMITS.maxFrameBytes - fixed + 1) / entry);
})();

/**
 * The longest delay a Node timer (`setTimeout`, `setInterval`) waits: asked for longer, it fires after 1 ms.
 * The durations the server hands to its timers are at most this.
 */
export const MAX_TIMER_MS = 2_147_483_647;

/** The longest `heartbeatIntervalMs`: clients take at most 5 minutes of a `hello`'s interval. */
const MAX_HEARTBEAT_INTERVAL_MS = 300_000;

/** One description per option of {@link ProgressServerOptions}: its default and its check. */
const SERVER_OPTIONS = {
  store: required(ofType<ProgressStore>('a ProgressStore', isObjectWith('getTask'))),
  authenticate: ofType<AuthenticateHook<Principal>>('a function', isFunction),
  authenticateToken: ofType<AuthenticateTokenHook<Principal>>('a function', isFunction),
  authorize: func<AuthorizeHook<Principal>>(ownerOnly),
  // An Express app is a function with `on`: say which server to pass instead of "got a function".
  server: ofType<HttpServer>(
    'an http.Server (with Express, what app.listen() returns, or http.createServer(app); not the app)',
    isObjectWith('on'),
  ),
  // Not ending with '/' (but '/' itself): the HTTP API's basePath defaults to it, and a basePath that ends
  // with '/' is refused, so '/progress/' was accepted here and then made httpHandler() and listen() throw
  // about a basePath the caller never passed.
  path: option(
    '/progress',
    'a path starting with "/", not ending with "/" (but "/" itself), of the characters a URL sends as they are (no query, fragment, space or non-ASCII character, unless percent-encoded), without . or .. segments',
    (value) =>
      typeof value === 'string' &&
      value.startsWith('/') &&
      (value === '/' || !value.endsWith('/')) &&
      isRequestPath(value),
  ),
  wss: ofType<WebSocketServer>('a WebSocketServer', isObjectWith('on')),
  allowedOrigins: option<AllowedOrigins>(
    'same-origin',
    "'same-origin', '*', an array of origins or a predicate",
    (value) =>
      value === '*' ||
      value === 'same-origin' ||
      typeof value === 'function' ||
      (Array.isArray(value) && value.every((origin) => typeof origin === 'string')),
  ),
  tokenQueryParam: option<string | false>(
    false,
    'false or a parameter name',
    (value) => value === false || (typeof value === 'string' && value !== ''),
  ),
  revealTaskExistence: boolean(false),
  healthDetails: option<HealthDetails>(
    'authenticated',
    "'authenticated', 'public', 'none' or a predicate of the principal",
    (value) => value === 'authenticated' || value === 'public' || value === 'none' || isFunction(value),
  ),
  // 5 s, not 10: the client's connectTimeoutMs (10 s, started before the upgrade) ran out first.
  authTimeoutMs: integer(5_000, 1, MAX_TIMER_MS),
  upgradeTimeoutMs: integer(10_000, 1, MAX_TIMER_MS),
  maxPendingConnectionsPerAddress: integer(100, 1),
  maxPendingConnections: integer(10_000, 1),
  // 0 turns it off. At most 10^6/s (a burst of 5·10^7 tokens stays an exact float).
  authRateLimitPerAddressPerSecond: integer(20, 0, 1_000_000),
  clientAddress: ofType<ClientAddressHook>('a function', isFunction),
  // An id by the rule of task ids, reserved names included: it goes out in every `hello`, which clients
  // refuse as an invalid frame, and owns every lease, which stores refuse; only ID_PATTERN was
  // checked, so such a server started and then failed every task creation and every client's connect.
  serverId: ofType<string>(
    `1 to ${LIMITS.maxIdLength} of letters, digits and _ . : @ / -, not __proto__, constructor or prototype`,
    (value) => idProblem(value) === undefined,
  ),
  // Read in whole milliseconds, as a store's is (see wholeMillisecondClock): the server puts its time in
  // `heartbeat` and `pong` frames and SSE heartbeats, where the protocol allows only integers, so a clock of
  // `performance.timeOrigin + performance.now()` made every one of those frames invalid for clients.
  clock: storeClockOption(),
  logger: option<ProgressLogger>(silentLogger, 'a logger with debug, info, warn and error methods', (value) =>
    ['debug', 'info', 'warn', 'error'].every((method) => isObjectWith(method)(value)),
  ),
  registry: ofType<Registry>('a prom-client Registry', isObjectWith('registerMetric')),
  metricsPrefix: option(
    'finishline_',
    'a valid Prometheus name prefix',
    (value) => typeof value === 'string' && /^[a-zA-Z_:][a-zA-Z0-9_:]*$|^$/.test(value),
  ),
  maxPayloadBytes: integer(64 * 1024, 1024),
  maxSubscriptionsPerSocket: integer(100, 1, MAX_SUBSCRIPTIONS_PER_SOCKET),
  maxSocketsPerPrincipal: integer(100, 1),
  maxSubscriptionsPerPrincipal: integer(1000, 1),
  rateLimitPerPrincipalPerSecond: integer(500, 1),
  catchUpReadConcurrency: integer(4, 1),
  catchUpReadsPerPrincipal: integer(1, 1),
  rateLimitPerSecond: integer(100, 1),
  rateLimitBurst: integer(200, 1),
  maxRateLimitViolations: integer(50, 1),
  maxInvalidFrames: integer(10, 1),
  maxReplayEvents: integer(1000, 1, 10_000),
  // Clients derive their silence deadline from at most 5 minutes of the interval `hello` states (see
  // docs/protocol.md): a longer one had every quiet socket dropped by its client and reconnected.
  heartbeatIntervalMs: integer(15_000, 10, MAX_HEARTBEAT_INTERVAL_MS),
  // Long enough for a slow mobile reader to take in one socket buffer, short enough to free a dead
  // reader's stream slot soon; at most the longest delay setTimeout takes (a longer one fires at once).
  sseStallTimeoutMs: integer(30_000, 1, MAX_TIMER_MS),
  // 10 minutes: one reconnect per stream per 10 minutes costs a request and a read of the task, and frees
  // a stalled quiet reader's slot as soon.
  sseStreamLifetimeMs: integer(600_000, 0, MAX_TIMER_MS),
  maxUnreadAnswerBytes: integer(256 * 1024 * 1024, 1),
  reconnectsPerSecond: integer(20_000, 0),
  highWaterMarkBytes: integer(1024 * 1024, 0),
  backpressurePollMs: integer(10, 1, MAX_TIMER_MS),
  maxQueuedFrames: integer(10_000, 1),
  maxQueuedBytes: integer(16 * 1024 * 1024, 1),
  maxQueuedBytesPerPrincipal: integer(64 * 1024 * 1024, 1),
  maxQueuedBytesTotal: integer(512 * 1024 * 1024, 1),
  terminalRetry: TERMINAL_RETRY_OPTION,
  leaseTtlMs: integer(15_000, 3, 86_400_000),
  // No fixed default: it follows leaseTtlMs (a third of it), computed in resolveServerOptions.
  leaseRenewIntervalMs: ofType<number>(
    'an integer >= 1',
    (value) => Number.isSafeInteger(value) && (value as number) >= 1,
  ),
  reapIntervalMs: integer(5_000, 0, MAX_TIMER_MS),
  storeRetryDelayMs: integer(1_000, 1, MAX_TIMER_MS),
} satisfies { [K in keyof Required<ProgressServerOptions>]: unknown };

/**
 * The defaults of {@link ProgressServerOptions}. `serverId` defaults to `${hostname}-${pid}-${random}` and
 * `leaseRenewIntervalMs` to `leaseTtlMs / 3`, both computed at construction.
 */
export const PROGRESS_SERVER_DEFAULTS = Object.freeze(defaultsOf(SERVER_OPTIONS));

/** The options after merging defaults and validation. */
export type ResolvedServerOptions<P extends Principal> = Omit<
  ResolvedOptionsOf<typeof SERVER_OPTIONS>,
  | 'authenticate'
  | 'authenticateToken'
  | 'authorize'
  | 'serverId'
  | 'leaseRenewIntervalMs'
  | 'terminalRetry'
  | 'healthDetails'
> & {
  healthDetails: HealthDetails<P>;
  authenticate: AuthenticateHook<P> | undefined;
  authenticateToken: AuthenticateTokenHook<P> | undefined;
  authorize: AuthorizeHook<P>;
  serverId: string;
  leaseRenewIntervalMs: number;
  terminalRetry: TerminalRetryOptions;
};

/**
 * Each listed origin must be one a browser can send: the `Origin` header is compared as a string, and a
 * browser sends the serialized origin (lower-case scheme and host, no default port, no path, no trailing
 * slash). `'http://localhost:5173/'`, copied from the address bar, was accepted and never matched: every
 * upgrade from that page got 403.
 */
function checkListedOrigins(origins: readonly string[]): void {
  origins.forEach((origin, index) => {
    let serialized: string | undefined;
    try {
      serialized = new URL(origin).origin;
    } catch {
      serialized = undefined;
    }
    if (serialized === origin && origin !== 'null') return;
    // A non-special scheme's origin is sent as written (an extension's `chrome-extension://<id>`, a mobile
    // shell's `capacitor://localhost`), and URL gives it `null`: taken when it has no path and no upper case.
    if (serialized === 'null' && /^[a-z][a-z\d+.-]*:\/\/[^/?#\sA-Z]+$/.test(origin)) return;
    if (origin === 'null') {
      throw invalidOption(
        'ProgressServer',
        `allowedOrigins[${index}] "null" would let any page in (a sandboxed frame, a file: page sends it): use a predicate to decide on such requests`,
      );
    }
    const fix =
      serialized === undefined || serialized === 'null' ? '' : `: use ${JSON.stringify(serialized)}`;
    throw invalidOption(
      'ProgressServer',
      `allowedOrigins[${index}] ${JSON.stringify(origin)} is not an origin as browsers send it (scheme://host[:port], lower case, without a path, a trailing slash or the default port)${fix}`,
    );
  });
}

function defaultServerId(): string {
  const host =
    hostname()
      .replace(/[^A-Za-z0-9_.:@/-]/g, '-')
      .slice(0, 80) || 'server';
  return `${host}-${process.pid}-${randomUUID().slice(0, 8)}`;
}

/**
 * Checks `options` against the option table once (unknown keys refused, naming the nearest option),
 * applies the defaults, then the rules between options.
 *
 * @throws ProgressError `invalid_input` naming the offending option.
 */
export function resolveServerOptions<P extends Principal>(
  options: ProgressServerOptions<P>,
): ResolvedServerOptions<P> {
  // `store: PostgresProgressStore.open(…)` without its `await` (plain JavaScript: TypeScript refuses it)
  // was refused as "got an object", which named neither the promise nor the fix.
  let isPromise = false;
  try {
    const store: unknown = (options as { store?: unknown } | undefined)?.store;
    isPromise = typeof (store as { then?: unknown } | null)?.then === 'function';
  } catch {
    // A getter or Proxy trap that throws: resolveOptions reads `store` again and refuses it with
    // invalid_input naming it (here, its error left the constructor without a code).
  }
  if (isPromise) {
    throw invalidOption(
      'ProgressServer',
      'store is a promise: pass the store it resolves to (`await PostgresProgressStore.open(…)`)',
    );
  }
  const o = resolveOptions('ProgressServer', SERVER_OPTIONS, options);
  if (o.authenticate === undefined && o.authenticateToken === undefined) {
    throw invalidOption(
      'ProgressServer',
      'authenticate or authenticateToken is required (every socket needs a principal)',
    );
  }
  if (o.server !== undefined && o.wss !== undefined) {
    throw invalidOption(
      'ProgressServer',
      'pass either server (attach at path) or wss (your WebSocketServer), not both',
    );
  }
  if (Array.isArray(o.allowedOrigins)) checkListedOrigins(o.allowedOrigins);
  if (o.tokenQueryParam !== false && o.authenticateToken === undefined) {
    throw invalidOption('ProgressServer', 'tokenQueryParam needs authenticateToken');
  }
  const leaseRenewIntervalMs = o.leaseRenewIntervalMs ?? Math.max(1, Math.floor(o.leaseTtlMs / 3));
  if (leaseRenewIntervalMs >= o.leaseTtlMs) {
    throw invalidOption(
      'ProgressServer',
      `leaseRenewIntervalMs (${leaseRenewIntervalMs}) must be below leaseTtlMs (${o.leaseTtlMs})`,
    );
  }
  return {
    ...o,
    authenticate: o.authenticate as AuthenticateHook<P> | undefined,
    authenticateToken: o.authenticateToken as AuthenticateTokenHook<P> | undefined,
    authorize: o.authorize as AuthorizeHook<P>,
    healthDetails: o.healthDetails as HealthDetails<P>,
    serverId: o.serverId ?? defaultServerId(),
    logger: guardLogger(o.logger),
    leaseRenewIntervalMs,
  };
}
