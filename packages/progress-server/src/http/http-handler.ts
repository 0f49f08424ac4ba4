/**
 * The HTTP API's routes: matching, authentication and per-task authorization, and the answer of each
 * route (list, task, events, cancel, SSE stream, ack, health).
 *
 * @module
 */

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ProgressStore, Task } from '@finishline/core';
import {
  ErrorCode,
  ID_PATTERN,
  isProgressError,
  LIMITS,
  ProgressError,
  STORE_DEFAULTS,
  toTaskView,
} from '@finishline/core';
import { idProblem, isStorableText, ofType, resolveOptions } from '@finishline/core/internal';
import { AuthRateLimited } from '../address-auth-limits.js';
import type { AllowedOrigins, Principal } from '../auth.js';
import { credentialExpired, isRequestPath, pathOf } from '../auth.js';
import type { Authenticator } from '../authenticator.js';
import { clientError, isStoreFailure } from '../client-message.js';
import type { AckWriter } from '../hub/ack-writer.js';
import type { FairReads } from '../hub/fair-reads.js';
import { FIRST_EPOCH_READ_WAIT_MS } from '../hub/store-epoch.js';
import type { ProgressLogger } from '../logger.js';
import { describeError } from '../logger.js';
import type { ServerMetrics } from '../metrics.js';
import type { HealthDetails } from '../options.js';
import type { PendingConnections } from '../socket/pending-connections.js';
import type { TaskApi } from '../tasks/task-api.js';
import { missingTask, taskNotFoundMessage } from '../tasks/task-not-found.js';
import { settledWithin, waitAtMost } from '../wait.js';
import { allowOrigin, answerPreflight, isPreflight } from './cors.js';
import type { ServerHealth } from './health.js';
import {
  ANSWER_HEADERS,
  ANSWER_SLICE_BYTES,
  checkMutation,
  checkOrigin,
  closeIfBodyComing,
  encodeBody,
  errorBody,
  fromCode,
  HTTP_STATUS,
  HttpError,
  parseInteger,
  parseStatuses,
  queryParam,
  readJsonBody,
  send,
  sendEncoded,
} from './http-request.js';
import type { StreamContext } from './sse-stream.js';
import { answerStreamHead, cursorAtEnd, finishByDeadline, streamCursor, streamTask } from './sse-stream.js';
import { stallTimer } from './stall-timer.js';

export { HTTP_STATUS } from './http-request.js';

/** An answer being written, as the server's shutdown sees it. @internal */
export interface OpenAnswer {
  /** Resolves once the answer left, or at `deadline` (epoch ms) with its connection destroyed. */
  shutdown(deadline: number): Promise<void>;
}

/**
 * A request handler in the shape node `http`, Express and Connect share. Requests outside `basePath` (or
 * to unknown routes under it) are passed to `next` when there is one, else answered with 404.
 */
export type HttpHandler = (
  request: IncomingMessage,
  response: ServerResponse,
  next?: (error?: unknown) => void,
) => void;

/** Options of {@link ProgressServer.httpHandler}. */
export interface HttpHandlerOptions {
  /**
   * Path prefix of the routes, without a trailing slash; of the characters a URL carries as they are, as
   * the server's `path` (a non-ASCII character or a space percent-encoded; no query, fragment, `.` or `..`
   * segment: refused since 7 December 2026, when they matched no request).
   * @default the server's `path` (`'/progress'` unless set), where the client's HTTP fallback looks
   */
  basePath?: string | undefined;
}

/** The defaults of {@link HttpHandlerOptions}. `basePath` follows the server's `path`, which is this unless set. */
export const HTTP_HANDLER_DEFAULTS = Object.freeze({ basePath: '/progress' });

/** The options of {@link HttpHandlerOptions}; `basePath` is checked with the server's `path` it defaults to. */
const HTTP_HANDLER_OPTIONS = {
  basePath: ofType<string>('a string', (value) => typeof value === 'string'),
} satisfies { [K in keyof Required<HttpHandlerOptions>]: unknown };

/** The message of every 503 `closed`: the server is shutting down. */
const SHUTTING_DOWN = 'Server is shutting down';

/** Default and largest page of `GET …/events`. */
const EVENTS_DEFAULT_LIMIT = 100;
const EVENTS_MAX_LIMIT = 1000;

/** @internal */
export interface HttpHandlerContext<P extends Principal> {
  auth: Authenticator<P>;
  /**
   * The server's `allowedOrigins`: every route but `healthz` and `livez` checks the request's Origin against
   * it, before any other answer, and lets an allowed origin read its answers (CORS, see cors.ts). (The probes
   * send no CORS headers: probes send no Origin, and a page has no use for it.)
   */
  allowedOrigins: AllowedOrigins;
  /** The server's `revealTaskExistence`: 403 rather than 404 for a task the principal may not watch. */
  revealTaskExistence: boolean;
  tasks: TaskApi;
  store: Pick<ProgressStore, 'getTask' | 'readEvents' | 'listTasks'>;
  metrics: ServerMetrics;
  logger: ProgressLogger;
  /**
   * The replica's health, served unauthenticated at `{basePath}/healthz`, beside the liveness route
   * `{basePath}/livez`; both routes are absent without it.
   */
  health?: () => ServerHealth;
  /** The WebSocket path: a plain request to it is answered 426 rather than passed on or left hanging. */
  webSocketPath?: string;
  /** Who sees more than `{ ok }` at `{basePath}/healthz` (the server's `healthDetails`). */
  healthDetails?: HealthDetails<P>;
  /**
   * The store's epoch, sent with a task's answers (as `hello` and snapshots carry it), so an HTTP client
   * can tell a cursor of a restored store's old log; none when unknown. `reread`: a read of it started
   * now, which those answers wait for once they read their data (see {@link epochRead}).
   */
  epoch?: { readonly current: string | undefined; reread?(): Promise<void> };
  /** `true` once the server is shutting down: requests are refused with 503 `closed`. */
  closing?: () => boolean;
  /** The server's clock, for `Principal.expiresAt`. @default Date.now */
  clock?: () => number;
  /**
   * Longest wait of a task route's request on the application's hooks (`authenticate` /
   * `authenticateToken`, then each `authorize`; the list's checks together): the server's
   * `upgradeTimeoutMs`, the bound of the same hooks on an upgrade. Past it the request is answered 504
   * `timeout`.
   */
  hookTimeoutMs: number;
  /**
   * Aborted when the server starts shutting down: a request still waiting on a hook is answered 503
   * `closed` then, as an upgrade is, and its wait's timer cleared.
   */
  shutdown?: AbortSignal;
  /**
   * The server's connections not authenticated yet: a request's connection counts while its
   * `authenticate` hook runs, as an upgrade's does while it is checked.
   */
  pending?: Pick<PendingConnections, 'add' | 'release' | 'has' | 'authenticated'> | undefined;
  /**
   * Bytes of the answers of every handler of the server not yet handed to the network, and their bound
   * (the server's `maxUnreadAnswerBytes`), and each principal's share (no entry at 0): see
   * {@link AnswerWriter}. The server's, so an application mounting `httpHandler()` twice (two base
   * paths, two frameworks) gives a principal one budget, not one per handler.
   */
  unreadAnswers: { bytes: number; readonly max: number; readonly byPrincipal: Map<string, number> };
  /**
   * Each principal's requests of the API past authentication and not answered yet (no entry at 0), and
   * their bound (the server's `maxSubscriptionsPerPrincipal`): see {@link takeRequestSlot}. The server's,
   * shared by all its handlers, as `unreadAnswers` is.
   */
  requestsInProgress: { readonly max: number; readonly byPrincipal: Map<string, number> };
  /**
   * The server's scheduler of store reads (see {@link FairReads}): every read of a route, once its
   * principal is known, runs in that principal's turn, as a socket's subscribe and an event stream's
   * reads do. None: the routes read the store at once.
   */
  reads?: Pick<FairReads, 'run'> | undefined;
  /**
   * The server's answers still being written (see {@link AnswerWriter}): its shutdown gives each until its
   * deadline to leave, then destroys its connection (see {@link finishByDeadline}).
   */
  openAnswers?: Set<OpenAnswer>;
  /** What `GET …/stream` (Server-Sent Events) and `POST …/ack` need. */
  streams: StreamContext & { acks: Pick<AckWriter, 'ack' | 'mark' | 'seen'>; maxSocketsPerPrincipal: number };
}

/** `serve` wrote the response itself (an event stream, a preflight's answer). */
const STREAMED = Symbol('streamed');

/**
 * A task route's id, as decoded from its path segment; `undecodable` when the segment is not valid
 * percent-encoding (see {@link decodeTaskId}).
 */
type TaskIdOf = { taskId: string; undecodable?: true };

type Route =
  | { name: 'list' }
  | ({ name: 'task' } & TaskIdOf)
  | ({ name: 'events' } & TaskIdOf)
  | ({ name: 'cancel' } & TaskIdOf)
  | ({ name: 'stream' } & TaskIdOf)
  | ({ name: 'ack' } & TaskIdOf);

const ALLOWED: Record<Route['name'], string> = {
  list: 'GET',
  task: 'GET',
  events: 'GET',
  cancel: 'POST',
  stream: 'GET',
  ack: 'POST',
};

/**
 * Builds the HTTP API (see the package README for the routes). Every route authenticates like the
 * upgrade does (`authenticate(request)`, else an `Authorization: Bearer` token through
 * `authenticateToken`) and authorizes per task; a refused request gets no task data.
 *
 * @internal
 */
export function createHttpHandler<P extends Principal>(
  ctx: HttpHandlerContext<P>,
  options: HttpHandlerOptions = {},
): HttpHandler {
  // Unknown keys refused, naming the nearest: `{ basepath: '/api' }` served the API at the default path.
  const given = resolveOptions('httpHandler', HTTP_HANDLER_OPTIONS, options);
  // The server's path, as listen()'s httpBasePath: a client derives its HTTP fallback's path from its
  // WebSocket url, and a fixed '/progress' answered every fallback request of a custom path 404.
  // A socket at the root ('/') puts the API at the root too: '' (a basePath never ends with '/').
  const basePath =
    given.basePath ?? (ctx.webSocketPath === '/' ? '' : ctx.webSocketPath) ?? HTTP_HANDLER_DEFAULTS.basePath;
  // Of the characters a client sends as they are (see `isRequestPath`): `/api?v=1`, `/progrès` or `/a b`
  // were accepted and matched no request, every route a 404 (or the framework's next()).
  if (
    typeof basePath !== 'string' ||
    !(basePath === '' || (basePath.startsWith('/') && !basePath.endsWith('/') && isRequestPath(basePath)))
  ) {
    throw new ProgressError(
      ErrorCode.InvalidInput,
      `httpHandler: basePath must be '' or start with '/' and not end with '/', of the characters a URL sends as they are (no query, fragment, space or non-ASCII character, unless percent-encoded) and without . or .. segments, got ${JSON.stringify(basePath)}`,
    );
  }

  const answers = new AnswerWriter(ctx);
  return (request, response, next) => {
    let route: Route | undefined;
    let url: URL;
    // Express strips a mount path from `url`; `originalUrl` keeps it.
    const raw = (request as { originalUrl?: string }).originalUrl ?? request.url ?? '/';
    // Every path below is matched as sent, as the upgrade's is: `url.pathname` resolves dot segments, and
    // matched on it, `GET …/x/../healthz` was the health route, and `GET /elsewhere/../progress` answered
    // 426 "send an upgrade request" to a path whose upgrade is refused 404.
    const path = pathOf(raw);
    try {
      url = new URL(raw, 'http://localhost');
      route = matchRoute(path, basePath);
    } catch {
      route = undefined;
      url = new URL('http://localhost/');
    }
    const probe =
      route !== undefined || ctx.health === undefined
        ? undefined
        : isProbeRoute(request, path, `${basePath}/healthz`)
          ? 'healthz'
          : isProbeRoute(request, path, `${basePath}/livez`)
            ? 'livez'
            : undefined;
    const webSocketOnly =
      route === undefined &&
      probe === undefined &&
      ctx.webSocketPath !== undefined &&
      path === ctx.webSocketPath;
    if (route === undefined && probe === undefined && !webSocketOnly && next !== undefined) {
      // Not this handler's: the application's response is left as it was, without the headers below.
      next();
      return;
    }
    // Every answer of this handler, whoever writes it (JSON, the event stream, a 204, a preflight's),
    // carries these: set on the response, which each `writeHead` merges.
    for (const [name, value] of Object.entries(ANSWER_HEADERS)) response.setHeader(name, value);
    if (probe === 'healthz' && ctx.health !== undefined) {
      void serveHealth(ctx, ctx.health, request, response);
      return;
    }
    if (probe === 'livez') {
      // The liveness probe: answered whenever the event loop turns, whatever the store's state or a
      // shutdown under way. A `tcpSocket` probe cannot tell a stalled loop: the kernel completes the
      // handshake into the listen backlog, so a replica stuck in a synchronous loop passed it.
      send(response, { status: 200, body: { ok: true } });
      return;
    }
    if (webSocketOnly) {
      send(response, {
        status: 426,
        body: errorBody(ErrorCode.InvalidInput, 'This path only speaks WebSocket: send an upgrade request'),
        // `close` kept when the request asked for it (or is HTTP/1.0 without keep-alive): a `Connection`
        // header without it made Node keep the connection open after the answer.
        headers: {
          upgrade: 'websocket',
          connection: response.shouldKeepAlive ? 'Upgrade' : 'Upgrade, close',
        },
      });
      return;
    }
    if (route === undefined) {
      send(response, { status: 404, body: errorBody(ErrorCode.InvalidInput, 'No such route') });
      return;
    }
    // Whose answer it is, once authenticated: its unread answers count against the principal's budget.
    const asker: { id?: string } = {};
    const answer = (reply: Parameters<typeof send>[1]) => answers.send(request, response, reply, asker.id);
    serve(ctx, route, url, request, response, asker).then(
      (body) => {
        if (body !== STREAMED) answer({ status: 200, body });
      },
      (error: unknown) => {
        if (error instanceof HttpError) {
          answer({
            status: error.status,
            body: errorBody(error.code, error.message),
            headers: error.headers,
          });
          return;
        }
        if (isProgressError(error)) {
          if (error.code === ErrorCode.Closed && ctx.closing?.() === true) {
            // The server's own refusal during shutdown (or its store closed as it shuts down): 503
            // `closed`, which sends the client to another replica. Not a store failure.
            answer({
              status: HTTP_STATUS.closed,
              body: errorBody(ErrorCode.Closed, SHUTTING_DOWN),
            });
            return;
          }
          if (isStoreFailure(error)) {
            ctx.metrics.storeErrors.inc();
            // The client gets a fixed message (see clientError); the store's own words are for the log.
            ctx.logger.warn(
              { err: describeError(error), route: route.name, ...loggableTaskId(route) },
              'HTTP request failed in the store',
            );
          }
          const { code, message } = clientError(error);
          answer({ status: HTTP_STATUS[code], body: errorBody(code, message) });
          return;
        }
        ctx.metrics.handlerErrors.inc();
        ctx.logger.error({ err: describeError(error), route: route.name }, 'HTTP handler failed');
        answer({ status: 500, body: errorBody(ErrorCode.Internal, 'Internal error') });
      },
    );
  };
}

/**
 * The route's task id for a log record, when it passes the protocol's id rule: an operator told of a
 * store failure needs the task it hit, and an id taken from the URL as it came could carry control
 * characters into a text log (docs/operations.md: log fields are checked ids).
 */
function loggableTaskId(route: Route): { taskId?: string } {
  if (!('taskId' in route)) return {};
  const id = route.taskId;
  return id.length > 0 && id.length <= LIMITS.maxIdLength && ID_PATTERN.test(id) ? { taskId: id } : {};
}

/**
 * `GET` / `HEAD` of `probe` (`{basePath}/healthz`, the readiness probe, or `…/livez`): a probe's route (no
 * authentication, no Origin check, no task data), `path` being the request's as sent.
 */
function isProbeRoute(request: IncomingMessage, path: string, probe: string): boolean {
  const method = request.method ?? 'GET';
  return (method === 'GET' || method === 'HEAD') && path === probe;
}

/**
 * 200 when healthy, 503 otherwise, so a Kubernetes probe needs no JSON parsing. The body is `{ ok }`
 * unless details are public or the request carries credentials (see {@link carriesCredentials}) that
 * authenticate: the details name the host and pid (in
 * `serverId`) and the store's last error, which an anonymous caller has no use for. Never rejects.
 */
async function serveHealth<P extends Principal>(
  ctx: HttpHandlerContext<P>,
  health: () => ServerHealth,
  request: IncomingMessage,
  response: ServerResponse,
): Promise<void> {
  // A health function that throws reports no health: 503 (`undefined`).
  const read = (): ServerHealth | undefined => {
    try {
      return health();
    } catch {
      return undefined;
    }
  };
  let report = read();
  const who = ctx.healthDetails ?? 'authenticated';
  let detailed = who === 'public';
  // Only a request carrying credentials asks the hooks. Probes (the kubelet's, a load balancer's) send
  // none, every few seconds: run through `authenticate`, each one waited on the hook (a slow or hung
  // auth backend timed the probe out and got the replica marked unready) and spent an attempt of its
  // address's failed-authentication budget, so one node's probes got its real clients refused 429.
  if (report !== undefined && who !== 'public' && who !== 'none' && carriesCredentials(request)) {
    const decided = (async () => {
      // An expired credential authenticates nothing, here as on every other route (401 token_expired).
      const principal = await ctx.auth.fromHttp(request);
      return (
        principal !== undefined &&
        !credentialExpired(principal, (ctx.clock ?? Date.now)()) &&
        (who === 'authenticated' || (await who(principal)) === true)
      );
    })().catch((error: unknown) => {
      ctx.logger.debug({ err: describeError(error) }, 'health details check threw on the health route');
      return false;
    });
    // The hooks decide the details only, never the status: a hook that hangs (an auth backend down) must
    // not hold the answer past a probe's timeout, or a probe sending credentials (a load balancer behind an
    // auth proxy that adds them) found the replica unready for its auth backend's sake.
    detailed = await settledWithin(decided, HEALTH_HOOKS_WAIT_MS, false);
    // Read again after the wait: a shutdown that began meanwhile (or the feed lost) answered 200 with the
    // report of before, and the load balancer kept sending clients to a replica closing.
    report = read();
  }
  if (report === undefined) {
    send(response, { status: 503, body: { ok: false } });
    return;
  }
  send(response, { status: report.ok ? 200 : 503, body: detailed ? report : { ok: report.ok } });
}

/**
 * Longest wait of the health route for the hooks that decide on its details; past it the answer is
 * `{ ok }`. Half the kubelet's default probe timeout (`timeoutSeconds: 1`).
 */
const HEALTH_HOOKS_WAIT_MS = 500;

/**
 * Whether the request carries credentials the health route asks the hooks about: an `Authorization`
 * header (a bearer token, Basic) or a `Cookie` header (a session), where browsers and programs send them.
 * A hook that reads another header is not asked on this route (docs/operations.md, "The health endpoint").
 */
function carriesCredentials(request: IncomingMessage): boolean {
  return request.headers.authorization !== undefined || request.headers.cookie !== undefined;
}

/**
 * The route `path` names exactly, if any. A path with a trailing slash names none: it is answered 404 (or
 * passed to `next`) like any other path that is not a route. Routing `…/tasks/x/` as `…/tasks/x` would
 * give each route a second URL, against which relative URLs resolve differently. Left to the split below,
 * `…/tasks/` was the task with the id '' (400 "Invalid task id", an id the caller never sent) while every
 * other trailing slash was already a 404.
 */
function matchRoute(path: string, basePath: string): Route | undefined {
  if (!path.startsWith(`${basePath}/`) || path.endsWith('/')) return undefined;
  const segments = path.slice(basePath.length + 1).split('/');
  if (segments[0] !== 'tasks') return undefined;
  if (segments.length === 1) return { name: 'list' };
  const id = decodeTaskId(segments[1] ?? '');
  if (segments.length === 2) return { name: 'task', ...id };
  if (segments.length === 3 && segments[2] === 'events') return { name: 'events', ...id };
  if (segments.length === 3 && segments[2] === 'cancel') return { name: 'cancel', ...id };
  if (segments.length === 3 && segments[2] === 'stream') return { name: 'stream', ...id };
  if (segments.length === 3 && segments[2] === 'ack') return { name: 'ack', ...id };
  return undefined;
}

/**
 * Ids may contain '/', so clients percent-encode them (encodeURIComponent) into one segment. A segment
 * that is not valid percent-encoding (a cut escape, `%zz`, bytes that are not UTF-8) is `undecodable`: the
 * route still matches, and the request is refused 400 `invalid_input` saying so (see
 * {@link checkRouteTaskId}), where a throw here would have made it an unknown route (404). Until 7
 * December 2026 it decoded to '', refused as "Invalid task id: must not be empty", an id the caller
 * never sent.
 */
function decodeTaskId(segment: string): TaskIdOf {
  try {
    return { taskId: decodeURIComponent(segment) };
  } catch {
    return { taskId: '', undecodable: true };
  }
}

/** Refuses a task route whose id segment is not valid percent-encoding (400), as {@link checkTaskId} an invalid id. */
function checkRouteTaskId(route: Route): void {
  if ('undecodable' in route && route.undecodable === true) {
    throw fromCode(
      ErrorCode.InvalidInput,
      'Invalid task id: the path segment is not valid percent-encoding (encodeURIComponent of the id)',
    );
  }
}

/**
 * The route's answer, each wait on its application hooks bounded by `hookTimeoutMs` (see {@link HookDeadline}):
 * a hook that hung (an auth backend down) held each request, its connection and its memory, until the hook
 * answered, where an upgrade's gave up after `upgradeTimeoutMs`.
 */
async function serve<P extends Principal>(
  ctx: HttpHandlerContext<P>,
  route: Route,
  url: URL,
  request: IncomingMessage,
  response: ServerResponse,
  asker: { id?: string },
): Promise<unknown> {
  const hooks = new HookDeadline(
    ctx.hookTimeoutMs,
    () => {
      ctx.metrics.handlerErrors.inc();
      ctx.logger.warn(
        { route: route.name, timeoutMs: ctx.hookTimeoutMs },
        'authenticate or authorize hook did not answer within upgradeTimeoutMs; answering 504',
      );
    },
    ctx.shutdown,
  );
  const slot: { release?: () => void } = {};
  try {
    return await serveRoute(ctx, route, url, request, response, asker, hooks, slot);
  } finally {
    hooks.clear();
    slot.release?.();
  }
}

/**
 * Bounds each wait of one request on the application's hooks: {@link within} rejects with 504 `timeout`
 * when its hook has not answered within `ms`, and with 503 `closed` as soon as the server starts shutting
 * down (`shutdown`). The hung hook's promise is left to itself; the request is answered and lets go of its
 * connection. (A wait each, not one for the request: a slow store read between two hooks must not be
 * blamed on the second.) Without the shutdown's end, a request whose hook hung when `close()` began was
 * answered only at `ms` (10 s by default), its timer outliving `close()`.
 */
class HookDeadline {
  readonly #ms: number;
  readonly #onExpired: () => void;
  readonly #shutdown: AbortSignal | undefined;
  /** The wait under way, if any: {@link clear} ends it (its timer, its shutdown listener). */
  #end: (() => void) | undefined;

  constructor(ms: number, onExpired: () => void, shutdown?: AbortSignal) {
    this.#ms = ms;
    this.#onExpired = onExpired;
    this.#shutdown = shutdown;
  }

  async within<T>(promise: Promise<T>): Promise<T> {
    const expired = new Promise<never>((_, reject) => {
      const timer = setTimeout(() => {
        this.#onExpired();
        reject(
          fromCode(
            ErrorCode.Timeout,
            'The authentication or authorization of this request did not answer in time; retry later',
          ),
        );
      }, this.#ms);
      timer.unref();
      const onShutdown = () => reject(fromCode(ErrorCode.Closed, SHUTTING_DOWN));
      this.#shutdown?.addEventListener('abort', onShutdown, { once: true });
      this.#end = () => {
        clearTimeout(timer);
        this.#shutdown?.removeEventListener('abort', onShutdown);
      };
      // Begun before this wait (between two hooks): refused all the same, `promise` still raced below, so
      // that a rejection of it is handled.
      if (this.#shutdown?.aborted === true) onShutdown();
    });
    try {
      return await Promise.race([promise, expired]);
    } finally {
      this.clear();
    }
  }

  clear(): void {
    this.#end?.();
    this.#end = undefined;
  }
}

async function serveRoute<P extends Principal>(
  ctx: HttpHandlerContext<P>,
  route: Route,
  url: URL,
  request: IncomingMessage,
  response: ServerResponse,
  asker: { id?: string },
  hooks: HookDeadline,
  slot: { release?: () => void },
): Promise<unknown> {
  // The Origin first, before any other answer: a forged request learns nothing from this server, not
  // even which method a route takes (405) or that it is shutting down (503), and it runs none of the
  // application's hooks, so it reaches no store read or stream slot.
  checkOrigin(request, ctx.allowedOrigins);
  const method = request.method ?? 'GET';
  const allowed = ALLOWED[route.name];
  const methods = allowed === 'GET' ? 'GET, HEAD' : allowed;
  if (isPreflight(request)) {
    answerPreflight(request, response, methods);
    return STREAMED;
  }
  // From here every answer, errors included, is readable by the allowed origin (see cors.ts).
  allowOrigin(request, response);
  if (method !== allowed && !(allowed === 'GET' && method === 'HEAD')) {
    throw new HttpError(ErrorCode.InvalidInput, `Use ${allowed} on this route`, {
      status: 405,
      headers: { allow: methods },
    });
  }
  // docs/protocol.md: `closed` is "the code of the HTTP 503 refusing an upgrade or request during
  // shutdown". A stream started now would follow a hub that is closing and never end.
  if (ctx.closing?.() === true) throw fromCode(ErrorCode.Closed, SHUTTING_DOWN);
  // Before authentication, like the Origin above: a mutation also needs an Origin with its cookies and
  // a JSON body, which a form on another site cannot send.
  if (allowed === 'POST') checkMutation(request);
  let principal: P | undefined;
  // While its hook runs the connection is not authenticated yet, and counts as an upgrade being checked
  // does (`maxPendingConnectionsPerAddress`); one whose body is still coming counts already, until the end.
  const socket = request.socket;
  const pending = ctx.pending !== undefined && !ctx.pending.has(socket) ? ctx.pending : undefined;
  pending?.add(socket);
  try {
    principal = await hooks.within(ctx.auth.fromHttp(request));
  } catch (error) {
    if (error instanceof HttpError) throw error;
    if (error instanceof AuthRateLimited) {
      throw new HttpError(ErrorCode.RateLimited, error.message, {
        headers: { 'retry-after': String(error.retryAfterSeconds) },
      });
    }
    ctx.metrics.handlerErrors.inc();
    ctx.logger.error({ err: describeError(error) }, 'authenticate hook threw');
    throw fromCode(ErrorCode.Internal, 'Authentication failed');
  } finally {
    pending?.release(socket);
  }
  if (principal === undefined) throw fromCode(ErrorCode.Unauthenticated, 'Missing or invalid credentials');
  // Its connection, kept alive, no longer counts while idle (see `PendingConnections.idle`).
  ctx.pending?.authenticated(socket);
  asker.id = principal.id;
  // As a socket refuses one at once (4011): the client fetches a fresh credential for its next request.
  if (credentialExpired(principal, (ctx.clock ?? Date.now)())) {
    throw fromCode(ErrorCode.TokenExpired, 'The credential expired; send a fresh one');
  }
  // Each request costs a token of the principal's budget, the one its sockets' frames share
  // (`rateLimitPerPrincipalPerSecond`): every route reads the store, and nothing else bounded how many
  // reads a second one principal's requests made (a flood of lookups of unknown task ids, say).
  // A list of tasks costs more (see `LIST_TASKS_PER_TOKEN`), taken in one go so that a budget whose burst is
  // below its price still lets it through when full.
  slot.release = takeRequestSlot(ctx, principal.id);
  chargeRequest(ctx, principal.id, route.name === 'list' ? listCost(url) : 1);
  const store = readsInTurn(ctx, principal.id, request);
  // Where an invalid id is refused (once authenticated and charged, as the routes' `checkTaskId`), before
  // any other check of the request (its body, its cursor) names a problem the caller may not have.
  checkRouteTaskId(route);

  switch (route.name) {
    case 'list': {
      const statuses = parseStatuses(queryParam(url, 'status'));
      const limit = parseInteger(queryParam(url, 'limit'), LIST_LIMIT);
      const tasks = await store.listTasks({
        owner: principal.id,
        limit,
        ...(statuses === undefined ? {} : { statuses }),
      });
      // Owned is not enough: the application's `authorize` has the last word on every task route, and a
      // rule narrower than ownership (a role, a scope of the token) must hide a task here too, or the
      // list served what `GET …/tasks/:id` answers 404.
      // Once the wait ends (504 `timeout`, 503 `closed`), no more calls start: the answer is sent, and a
      // slow hook was asked about the rest of up to 1,000 tasks for nobody (the client's retry asking again).
      let answered = false;
      const allowed = await hooks
        .within(
          authorizeEach(
            tasks,
            (task) => ctx.auth.authorize(principal, task, 'watch'),
            () => answered,
          ),
        )
        .finally(() => {
          answered = true;
        });
      return { tasks: tasks.filter((_, index) => allowed[index]).map(toTaskView) };
    }
    case 'task': {
      const read = epochAfterRead(ctx);
      const task = await loadAuthorized(ctx, store, principal, route.taskId, 'watch', hooks, read.after);
      return { task: toTaskView(task), ...epochField(read.epoch) };
    }
    case 'events': {
      const afterSeq = parseInteger(queryParam(url, 'afterSeq'), {
        name: 'afterSeq',
        fallback: 0,
        min: 0,
        max: LIMITS.maxCount,
      });
      const limit = parseInteger(queryParam(url, 'limit'), {
        name: 'limit',
        fallback: EVENTS_DEFAULT_LIMIT,
        min: 1,
        max: EVENTS_MAX_LIMIT,
      });
      const read = epochAfterRead(ctx);
      const task = await loadAuthorized(ctx, store, principal, route.taskId, 'watch', hooks, read.after);
      const events = await store.readEvents(task.id, afterSeq, limit);
      // The events of the task authorized, not of whatever task has the id once the hooks answered: the
      // store's read names no run, and retention may purge the task and its id go to a new task (another
      // owner's too) meanwhile. The id's task read again still of this run means the events read before
      // were its own (a run's `createdAt` never comes back); another run, or none, is a task gone. An empty
      // page carries nothing of another run.
      if (events.length > 0 && (await store.getTask(task.id))?.createdAt !== task.createdAt) {
        throw fromCode(ErrorCode.TaskNotFound, taskNotFoundMessage(task.id));
      }
      // The task's epoch labels the events read after the hook too: a renewal since (a restore while the
      // hook ran) may have them of another log than the task. Read again after them, as for the task: the
      // epoch as this replica knew it let through a renewal it had not heard of yet (another replica's, a
      // feed that tells none), the new log's events answered with the old log's task and epoch. An empty
      // page carries nothing of another log: an idle poll costs no read.
      if (events.length > 0) await read.again();
      checkSameEpoch(ctx, read.epoch);
      // None at all though the task is ahead: the store no longer holds them (retention removed them and
      // kept the row). Asking again cannot bring them back, so no more: `task` stands for them. (True
      // there, a client paging while `hasMore` asked for the same empty page for ever.)
      const hasMore = events.length > 0 && (events.at(-1)?.seq ?? afterSeq) < task.seq;
      return { task: toTaskView(task), events, hasMore, ...epochField(read.epoch) };
    }
    case 'cancel': {
      const body = await readJsonBody(request);
      const reason = body.reason;
      // Refused as the store refuses such a text, not made storable as the handle's texts are (the HTTP
      // caller is told, a worker's catch block is not): a U+0000 was stored as U+FFFD, silently.
      if (
        reason !== undefined &&
        reason !== null &&
        (typeof reason !== 'string' || reason.length > LIMITS.maxKeyLength || !isStorableText(reason))
      ) {
        throw fromCode(
          ErrorCode.InvalidInput,
          `reason must be a string of at most ${LIMITS.maxKeyLength} characters, without U+0000 or an unpaired surrogate`,
        );
      }
      const task = await loadAuthorized(ctx, store, principal, route.taskId, 'cancel', hooks);
      // The task authorized, not whatever task has the id once the hooks answered (see `TaskApi.cancel`).
      const run = task.createdAt;
      await ctx.tasks
        .cancel(task.id, typeof reason === 'string' ? reason : null, run)
        .catch((error: unknown) => {
          // The store's and the handle's refusal names how the task ended ("already ended (failed)"): its
          // result, which a principal allowed to cancel it and not to watch it must not read here either.
          throw isProgressError(error, ErrorCode.TaskFinished)
            ? fromCode(ErrorCode.TaskFinished, `Task ${task.id} already ended`)
            : error;
        });
      // Allowed to cancel is not allowed to read: a principal that may not watch the task (an operator's
      // kill switch) learns that the cancel took, not the task's message, items or result.
      // The cancel took: what follows only decides whether the answer shows the task. A read after it that
      // fails, a `watch` check that does not answer within `upgradeTimeoutMs`, or a shutdown meanwhile
      // leaves the task out; answered 503 or 504, the cancel that took was reported failed, and the
      // caller's retry got 409 `task_finished`, as if someone else had ended the task.
      try {
        const after = (await store.getTask(task.id)) ?? task;
        if (await hooks.within(ctx.auth.authorize(principal, after, 'watch'))) {
          return { taskId: task.id, task: toTaskView(after) };
        }
      } catch (error) {
        // A bug is still a 500. (A hook's timeout was logged and counted as it expired.)
        if (!(error instanceof HttpError) && !isProgressError(error)) throw error;
        if (isProgressError(error) && isStoreFailure(error)) {
          ctx.metrics.storeErrors.inc();
          ctx.logger.warn(
            { err: describeError(error), taskId: task.id },
            'reading a task after its cancel failed; answering without it',
          );
        }
      }
      return { taskId: task.id };
    }
    case 'stream': {
      const { streams } = ctx;
      // EventSource resends the last `id:` it saw as Last-Event-ID; a first request may use ?afterSeq.
      const from = streamCursor(request.headers['last-event-id'], queryParam(url, 'afterSeq'));
      // Before the follow below, as the cursor is: an id the route refuses (400) is handed to neither the
      // hub nor the store's change feed (whose safety-net poll asks the store about every id followed).
      checkTaskId(route.taskId);
      // Followed before the read that authorizes it, as a socket's subscribe follows before its load: a
      // commit after this read is noticed (the hub's latest seq covers it), so the stream starts from
      // this read instead of reading the task again. Let go once the stream follows the task itself (a
      // subscriber of its own: two requests' holds must not be one entry of the hub's set).
      const unfollow = streams.hub.follow(route.taskId, { deliver: () => undefined });
      try {
        // Taken as the read starts: acks taken since are not judged by it (see `AckWriter.seen`).
        const mark = streams.acks.mark();
        // Before the cursor's epoch is judged, the 204 decided and the first id written.
        const read = epochAfterRead(ctx);
        const task = await loadAuthorized(ctx, store, principal, route.taskId, 'watch', hooks, read.after);
        // The stream labels its frames with the epoch as the server knows it: a renewal found after the
        // task's read (a restore while the hook ran) had the old log's task written as the new epoch's. One
        // found from here on restarts the stream (it is among the open ones from `streamTask` on, and
        // nothing awaits until then).
        checkSameEpoch(ctx, read.epoch);
        // Checked again after the awaits above (the authenticate hook, the load): a shutdown that began
        // meanwhile has ended the open streams already, and a stream opened now would be in none of its
        // sets (on the application's own http.Server it stayed open for ever, over a closed hub). From here
        // to `streamTask` registering the stream nothing awaits, so shutdown ends any stream opened.
        if (ctx.closing?.() === true) throw fromCode(ErrorCode.Closed, SHUTTING_DOWN);
        // The client has the end already (EventSource reconnecting after it): 204, which stops EventSource,
        // and holds no slot.
        if (cursorAtEnd(task, from, streams.epoch.current)) {
          response.writeHead(204, { 'cache-control': 'no-store', ...closeIfBodyComing(request) });
          response.end();
          return STREAMED;
        }
        // Refused as the GET would be up to here; past here the GET takes a slot, which a HEAD never holds.
        if (method === 'HEAD') {
          answerStreamHead(response);
          return STREAMED;
        }
        // A stream costs what a socket costs: it counts against the principal's socket cap.
        if (!streams.limits.openSocket(principal.id)) {
          ctx.metrics.principalLimits.inc({ limit: 'sockets' });
          throw fromCode(
            ErrorCode.TooManySockets,
            `A principal may have at most ${streams.maxSocketsPerPrincipal} sockets and streams open`,
          );
        }
        // What the stream's own load told the ack writer (another run of the id, or one below its acks).
        streams.acks.seen(task.id, task.seq, task.createdAt, mark);
        let released = false;
        streamTask(streams, {
          task,
          from,
          principal,
          authorize: (current) => ctx.auth.authorize(principal, current, 'watch'),
          hookTimeoutMs: ctx.hookTimeoutMs,
          request,
          response,
          release: () => {
            if (released) return;
            released = true;
            streams.limits.closeSocket(principal.id);
          },
        });
        return STREAMED;
      } finally {
        unfollow();
      }
    }
    case 'ack': {
      const { streams } = ctx;
      const body = await readJsonBody(request);
      const seq = body.seq;
      if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1) {
        throw fromCode(ErrorCode.InvalidInput, 'seq must be an integer >= 1');
      }
      // Taken as the read starts: a read older than acks taken since must not drop them (`AckWriter.seen`).
      const mark = streams.acks.mark();
      const task = await loadAuthorized(ctx, store, principal, route.taskId, 'watch', hooks);
      if (seq > task.seq) {
        throw fromCode(ErrorCode.InvalidInput, `ack of seq ${seq} is beyond the task's seq (${task.seq})`);
      }
      // Checked again after the awaits above (the body, the authenticate hook, the load): past the
      // shutdown's flush the ack writer is closed and drops the ack, and a 200 would tell the client it
      // was recorded (it never sends it again). 503 `closed` sends it to another replica.
      if (ctx.closing?.() === true) throw fromCode(ErrorCode.Closed, SHUTTING_DOWN);
      streams.acks.seen(task.id, task.seq, task.createdAt, mark);
      streams.acks.ack(task.id, seq, task.createdAt);
      return { taskId: task.id, seq };
    }
    default: {
      const unreachable: never = route;
      throw new TypeError(`Unknown route ${String(unreachable)}`);
    }
  }
}

/**
 * Most bytes of a principal's answers the server holds at once, written or waiting to be (see
 * {@link AnswerWriter}). Node answers the requests a connection pipelines together, each answer held in
 * memory behind the first, and the stall timeout judges only the first: one connection sending 20 requests
 * of a 4 MB events page in one write, and reading none, held 80 MB, and a few such connections (the
 * principal's budget allows 500 requests a second) gigabytes, as did a client reading 64 KiB of each
 * answer every 29 s on many connections. Some 8 pages of 1,000 events of 4 KB each: far more than a
 * client reading its answers has unread.
 */
export const MAX_UNREAD_ANSWER_BYTES_PER_PRINCIPAL = 32 * 1024 * 1024;

/**
 * Sends the routes' answers and follows each until it has left: a client that stopped reading one (an
 * events page or a list of up to 1,000 entries, megabytes with long messages) held all of it in the
 * server's memory, and its connection open, for as long as it liked. An answer that makes no progress (no
 * slice of {@link ANSWER_SLICE_BYTES} leaves for the network) for `sseStallTimeoutMs` is dropped (its
 * connection destroyed), as an event stream whose reader stopped reading is. The answers of one principal
 * not yet handed to the network hold at most {@link MAX_UNREAD_ANSWER_BYTES_PER_PRINCIPAL} (but one answer,
 * however large): past it a request is answered 429 `rate_limited` instead. So it is past the server's
 * `maxUnreadAnswerBytes`, all principals' answers together (but one answer while it holds none).
 */
class AnswerWriter {
  readonly #ctx: Pick<
    HttpHandlerContext<Principal>,
    'streams' | 'logger' | 'metrics' | 'unreadAnswers' | 'openAnswers'
  >;
  /** Bytes of each principal's answers not yet handed to the network, the server's; no entry at 0. */
  readonly #unread: Map<string, number>;

  constructor(
    ctx: Pick<
      HttpHandlerContext<Principal>,
      'streams' | 'logger' | 'metrics' | 'unreadAnswers' | 'openAnswers'
    >,
  ) {
    this.#ctx = ctx;
    this.#unread = ctx.unreadAnswers.byPrincipal;
  }

  /**
   * Sends `reply` (of `principalId`, once authenticated), and drops it if it stalls before it has left
   * (or its connection closed).
   */
  send(
    request: IncomingMessage,
    response: ServerResponse,
    reply: Parameters<typeof send>[1],
    principalId: string | undefined,
  ): void {
    if (response.headersSent || response.writableEnded || response.destroyed) {
      send(response, reply);
      return;
    }
    const data = encodeBody(reply.body);
    const held = principalId === undefined ? 0 : (this.#unread.get(principalId) ?? 0);
    if (principalId !== undefined && held > 0 && held + data.length > MAX_UNREAD_ANSWER_BYTES_PER_PRINCIPAL) {
      this.#ctx.metrics.principalLimits.inc({ limit: 'rate' });
      send(response, {
        status: HTTP_STATUS.rate_limited,
        body: errorBody(
          ErrorCode.RateLimited,
          "This principal's earlier answers are still unread; read them before asking for more",
        ),
        headers: { 'retry-after': '1' },
      });
      return;
    }
    const total = this.#ctx.unreadAnswers;
    if (principalId !== undefined && total.bytes > 0 && total.bytes + data.length > total.max) {
      this.#ctx.metrics.unreadAnswersRefused.inc();
      send(response, {
        status: HTTP_STATUS.rate_limited,
        body: errorBody(ErrorCode.RateLimited, 'The server holds too many unread answers; retry later'),
        headers: { 'retry-after': '1' },
      });
      return;
    }
    const stallMs = this.#ctx.streams.sseStallTimeoutMs;
    let cancel: (() => void) | undefined;
    const arm = () => {
      cancel?.();
      cancel = stallTimer(stallMs, () => {
        this.#ctx.logger.info({ stalledMs: stallMs }, 'HTTP reader stopped reading its answer; dropping it');
        response.destroy();
      });
    };
    sendEncoded(
      response,
      { status: reply.status, data, ...(reply.headers && { headers: reply.headers }) },
      () => {
        if (cancel !== undefined) arm();
      },
    );
    if (response.writableFinished || response.destroyed) return;
    arm();
    const stop = () => cancel?.();
    response.once('finish', stop);
    response.once('close', stop);
    // Ended by the server's shutdown at its deadline, as an event stream is: on the application's
    // http.Server, an answer whose reader stopped reading held its connection and stall timer for
    // sseStallTimeoutMs after close() returned, and the process could not exit.
    const open = this.#ctx.openAnswers;
    if (open !== undefined) {
      const opened: OpenAnswer = { shutdown: (deadline) => finishByDeadline(response, deadline) };
      open.add(opened);
      const forget = () => open.delete(opened);
      response.once('finish', forget);
      response.once('close', forget);
    }
    if (principalId === undefined) return;
    this.#unread.set(principalId, held + data.length);
    total.bytes += data.length;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      total.bytes -= data.length;
      const left = (this.#unread.get(principalId) ?? data.length) - data.length;
      if (left > 0) this.#unread.set(principalId, left);
      else this.#unread.delete(principalId);
    };
    response.once('finish', release);
    response.once('close', release);
    // An answer queued behind another of its connection's (pipelined) gets no 'close' when the client
    // leaves; its request does.
    request.once('close', release);
  }
}

/**
 * Counts a request of `principalId` in progress until the returned release, or refuses it 429
 * `rate_limited` with `Retry-After: 1` when the principal has `ctx.requestsInProgress.max` of them already
 * (`maxSubscriptionsPerPrincipal`: a principal following that many tasks has no use for more requests at
 * once). The rate budget bounds how many requests start a second, not how many wait: behind a slow or
 * hung store a principal's requests queued in `FairReads` without bound, 500 more a second, each holding
 * its request and answer (3,974 in 6 s, some 70 MB of heap, in the test of this bound), and ran their reads
 * once the store answered, for clients long gone. Taken before the token, so a refusal costs none.
 */
function takeRequestSlot<P extends Principal>(ctx: HttpHandlerContext<P>, principalId: string): () => void {
  const { max, byPrincipal } = ctx.requestsInProgress;
  const held = byPrincipal.get(principalId) ?? 0;
  if (held >= max) {
    ctx.metrics.principalLimits.inc({ limit: 'rate' });
    throw new HttpError(
      ErrorCode.RateLimited,
      `A principal may have at most ${max} requests of the API in progress; retry later`,
      { headers: { 'retry-after': '1' } },
    );
  }
  byPrincipal.set(principalId, held + 1);
  let released = false;
  return () => {
    if (released) return;
    released = true;
    const left = (byPrincipal.get(principalId) ?? 1) - 1;
    if (left > 0) byPrincipal.set(principalId, left);
    else byPrincipal.delete(principalId);
  };
}

/**
 * Takes `cost` tokens of the principal's rate budget (`rateLimitPerPrincipalPerSecond`, shared with its
 * sockets' frames), or refuses the request 429 `rate_limited` with `Retry-After: 1`.
 */
function chargeRequest<P extends Principal>(
  ctx: HttpHandlerContext<P>,
  principalId: string,
  cost: number,
): void {
  if (ctx.streams.limits.takeFrame(principalId, cost)) return;
  ctx.metrics.principalLimits.inc({ limit: 'rate' });
  throw new HttpError(
    ErrorCode.RateLimited,
    "Rate limit exceeded: this principal's requests and socket frames share one budget; retry later",
    { headers: { 'retry-after': '1' } },
  );
}

/**
 * Tasks of `GET …/tasks` one token of the principal's rate budget pays for: the store's default page, so
 * a list of the default size costs one token as any request does, and one of 1,000 (the most) costs 20.
 * Charged for the page asked for, before the store is read: the tasks listed are not known before, and
 * the read is as dear as the checks.
 */
const LIST_TASKS_PER_TOKEN: number = STORE_DEFAULTS.listLimit;

/**
 * The tokens a list costs: one per {@link LIST_TASKS_PER_TOKEN} tasks of its `limit`, rounded up. `authorize`
 * runs for each task listed, as for each subscribe of a socket, which pays a token: for the one token of
 * its request, a list of 1,000 ran the hook 1,000 times, 500,000 calls a second within a principal's
 * default budget. A `limit` the route refuses (400) costs one token, as any request.
 */
function listCost(url: URL): number {
  try {
    return Math.ceil(parseInteger(queryParam(url, 'limit'), LIST_LIMIT) / LIST_TASKS_PER_TOKEN);
  } catch {
    return 1;
  }
}

/** `GET …/tasks`'s `limit`. */
const LIST_LIMIT = { name: 'limit', fallback: STORE_DEFAULTS.listLimit, min: 1, max: 1000 } as const;

/**
 * Most `authorize` calls one `GET …/tasks` has in flight. The list authorizes each of its up to 1,000
 * tasks (for one token of the principal's rate limit until 6 December 2026; see {@link listCost}): all at once, one request started a thousand calls of
 * an async hook together (an authorization service, a database pool), and a few such requests starved
 * every other request's checks. A list whose hook is slow takes longer instead.
 */
const LIST_AUTHORIZE_CONCURRENCY = 8;

/**
 * `check` of each task, at most {@link LIST_AUTHORIZE_CONCURRENCY} at a time, in the tasks' order; none
 * starts once `stopped()` (the request was answered without waiting for them).
 */
async function authorizeEach(
  tasks: readonly Task[],
  check: (task: Task) => Promise<boolean>,
  stopped: () => boolean,
): Promise<boolean[]> {
  const allowed = new Array<boolean>(tasks.length).fill(false);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < tasks.length && !stopped()) {
      const index = next;
      next += 1;
      allowed[index] = await check(tasks[index] as Task);
    }
  };
  await Promise.all(Array.from({ length: Math.min(LIST_AUTHORIZE_CONCURRENCY, tasks.length) }, worker));
  return allowed;
}

/**
 * The store as a route of `principalId` reads it: each read in the principal's turn of the server's
 * {@link FairReads}, as a socket's subscribe and an event stream read (bounded in flight per principal and
 * in all, principals in turn). Read at once instead, one principal's burst of requests (its budget allows
 * 1,000 at once) started as many reads together, `GET …/events?limit=1000` or lists of 1,000 tasks each:
 * a million rows read and held at once, while the subscribes of every other principal waited for the
 * store behind them. A read still waiting when the server starts shutting down is refused 503 `closed`
 * (the scheduler runs no queued read after it closes).
 */
function readsInTurn<P extends Principal>(
  ctx: HttpHandlerContext<P>,
  principalId: string,
  request: IncomingMessage,
): Pick<ProgressStore, 'getTask' | 'readEvents' | 'listTasks'> {
  const { reads, store, shutdown } = ctx;
  if (reads === undefined) return store;
  // A read whose client left (its connection closed) is skipped: queued behind a slow store, it was run
  // once the store answered, for an answer nobody reads. (An HttpError: not logged nor counted as a store
  // failure.)
  const gone = () => request.socket.destroyed;
  const inTurn = <T>(given: () => Promise<T>): Promise<T> => {
    const read = () => (gone() ? Promise.reject(fromCode(ErrorCode.Closed, 'The client left')) : given());
    if (shutdown === undefined) return reads.run(principalId, read, gone);
    if (shutdown.aborted) return Promise.reject(fromCode(ErrorCode.Closed, SHUTTING_DOWN));
    return new Promise<T>((resolve, reject) => {
      const onShutdown = () => reject(fromCode(ErrorCode.Closed, SHUTTING_DOWN));
      shutdown.addEventListener('abort', onShutdown, { once: true });
      reads
        .run(principalId, read, gone)
        .then(resolve, reject)
        .finally(() => shutdown.removeEventListener('abort', onShutdown));
    });
  };
  return {
    getTask: (taskId) => inTurn(() => store.getTask(taskId)),
    readEvents: (taskId, afterSeq, limit) => inTurn(() => store.readEvents(taskId, afterSeq, limit)),
    listTasks: (query) => inTurn(() => store.listTasks(query)),
  };
}

/**
 * Reads the store's epoch once the answer's data is read, waiting at most `waitMs` (past it the answer
 * carries the epoch last read, or none); resolves to the time it waited. Why after the data: a renewal
 * follows the restore it is for, so the epoch read after the data is the data's. The epoch as this replica
 * last read it labelled the new epoch's data with the old one until a renewal's notice (or the next
 * heartbeat tick) reached it: a client that knew the new epoch from another replica started over back in
 * the old one, and one that knew only the old one took the restored log's events for the old log's.
 * (Before that, the routes waited only for the server's first read: a replica just started answered as a
 * server that knows no epoch.)
 */
async function epochRead<P extends Principal>(ctx: HttpHandlerContext<P>, waitMs: number): Promise<number> {
  const read = ctx.epoch?.reread?.();
  if (read === undefined) return 0;
  const started = Date.now();
  await waitAtMost(read, waitMs);
  return Date.now() - started;
}

/**
 * The epoch that labels a task route's answer: `after` reads it ({@link epochRead}) once the task is read,
 * before the `authorize` hook, and keeps it in `epoch`. Read after the hook (as until 7 December 2026), a
 * restore and its renewal done while the hook ran (it may take seconds) had the old log's task labelled
 * with the new epoch: a client took the old history's state for the new one's and went on from its seq in
 * the new log, for good, its next answers labelled alike. Labelled with its own epoch, the task is
 * corrected by the next answer, of the new epoch (a reset for the client). `again` reads it once more
 * (`events`, after its page), and only checks: `epoch` stays the task's.
 *
 * The request's waits for these reads share one {@link FIRST_EPOCH_READ_WAIT_MS}, the bound docs/protocol.md
 * gives: each waiting its own, a poll whose page was not empty waited twice that over a store whose epoch
 * read hung (4 s).
 */
function epochAfterRead<P extends Principal>(
  ctx: HttpHandlerContext<P>,
): { epoch: string | undefined; after: () => Promise<boolean>; again: () => Promise<void> } {
  let waitLeft = FIRST_EPOCH_READ_WAIT_MS;
  const wait = async () => {
    waitLeft -= await epochRead(ctx, waitLeft);
  };
  // The epoch as known before the task's read. A renewal between that read and the epoch's after it (a
  // restore and its renewal while the task's read was answered) had the old log's task labelled with the
  // new epoch, and on `events` the new log's page with it: the same epoch before and after is the one
  // proof the task is of it. `after` tells whether it was the same, for the caller to read the task again.
  let before = ctx.epoch?.current;
  const read = {
    epoch: before,
    after: async () => {
      await wait();
      read.epoch = ctx.epoch?.current;
      const same = before === undefined || read.epoch === before;
      before = read.epoch;
      return same;
    },
    again: wait,
  };
  return read;
}

/**
 * Refuses (503 `store_unavailable`: try again) an answer whose data read after the hook (events, a
 * stream's frames) may be of another epoch than its task's, `epoch` ({@link epochAfterRead}): the server
 * found a renewal since that task was read.
 */
function checkSameEpoch<P extends Principal>(ctx: HttpHandlerContext<P>, epoch: string | undefined): void {
  if (epoch === undefined || ctx.epoch?.current === epoch) return;
  throw epochChanged();
}

function epochChanged(): HttpError {
  return fromCode(
    ErrorCode.StoreUnavailable,
    "The store's epoch changed while this request was served (the store was restored); try again",
  );
}

/** `{ epoch }` when the epoch is known, else nothing. */
function epochField(epoch: string | undefined): { epoch?: string } {
  return epoch === undefined ? {} : { epoch };
}

/** Refuses an id no task can have (empty, too long, or outside the protocol's id characters): 400. */
function checkTaskId(taskId: string): void {
  if (taskId.length === 0 || taskId.length > LIMITS.maxIdLength || !ID_PATTERN.test(taskId)) {
    // Which rule it breaks, in the words the client's watch() uses: a bare "Invalid task id" left a caller
    // of `GET …/tasks/a%20b` guessing.
    throw fromCode(ErrorCode.InvalidInput, `Invalid task id: ${idProblem(taskId)}`);
  }
}

/**
 * The task, if the principal may `action` it. A task the principal may not watch answers exactly like a
 * missing one (404, same body) unless `revealTaskExistence` is on; one it may watch but not cancel is a
 * 403, since its existence is no secret to that principal. Neither answer carries task data. Unless
 * `revealTaskExistence` is on, `authorize` is asked about a missing task too (a stand-in: see
 * {@link missingTask}), so the two refusals wait for the same hook calls.
 */
async function loadAuthorized<P extends Principal>(
  ctx: HttpHandlerContext<P>,
  store: Pick<ProgressStore, 'getTask'>,
  principal: P,
  taskId: string,
  action: 'watch' | 'cancel',
  hooks: HookDeadline,
  afterRead?: () => Promise<boolean>,
): Promise<Task> {
  checkTaskId(taskId);
  const notFound = () => fromCode(ErrorCode.TaskNotFound, taskNotFoundMessage(taskId));
  let task = await store.getTask(taskId);
  // For a missing task too, unless its absence is no secret: its refusal no sooner than another owner's.
  if ((task !== undefined || !ctx.revealTaskExistence) && afterRead !== undefined && !(await afterRead())) {
    // The epoch changed across the read (see `epochAfterRead`): the task may be of either log. Read again,
    // once: a request that started before this replica heard of a renewal is not refused for it.
    task = await store.getTask(taskId);
    if (!(await afterRead())) throw epochChanged();
  }
  if (task === undefined && ctx.revealTaskExistence) throw notFound();
  // A missing task is refused after the same hook calls as another owner's (see `missingTask`): its
  // refusal no sooner, nor a 404 where a hung hook gets the other one a 504.
  const asked = task ?? missingTask(taskId);
  if (await hooks.within(ctx.auth.authorize(principal, asked, action))) {
    if (task !== undefined) return task;
    throw notFound();
  }
  const known =
    ctx.revealTaskExistence ||
    (action !== 'watch' && (await hooks.within(ctx.auth.authorize(principal, asked, 'watch'))));
  if (!known || task === undefined) throw notFound();
  throw fromCode(ErrorCode.Forbidden, `You may not ${action} task ${taskId}`);
}
