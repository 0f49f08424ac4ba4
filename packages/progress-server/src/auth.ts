/**
 * The authentication and authorization hooks an application plugs in (`authenticate`, `authenticateToken`,
 * `authorize`), the `Principal` they produce, and the default token extraction from headers and query.
 *
 * @module
 */
import type { IncomingMessage } from 'node:http';
import type { Task } from '@finishline/core';

/**
 * Who is asking. Finishline only reads `id` (the default authorization compares it with a task's
 * `owner`); applications may carry more (roles, tenant) in a subtype and read it in their `authorize`.
 */
export interface Principal {
  readonly id: string;
  /**
   * When the credential this principal came from stops being valid, in epoch milliseconds of the
   * server's clock. A socket whose credential expires gets `token_expired` and close code 4011 at that
   * moment, unless the client renewed it with an `auth` frame before (protocol version 2). Omitted:
   * the credential never expires for the server.
   */
  readonly expiresAt?: number;
}

/** What a principal wants to do with a task, passed to {@link AuthorizeHook}. */
export type TaskAction = 'watch' | 'cancel';

/**
 * Establishes the principal of an HTTP request or WebSocket upgrade from its headers or cookies, or
 * returns `null` (or `undefined`) when it carries no valid credentials. May be async. A hook that throws
 * is treated as a server error (HTTP 500), never as a principal.
 */
export type AuthenticateHook<P extends Principal> = (
  request: IncomingMessage,
) => P | null | undefined | Promise<P | null | undefined>;

/**
 * Establishes the principal from a bearer token: the `token` of a first-frame `auth` message, an HTTP
 * `Authorization: Bearer …` header, or (only when `tokenQueryParam` is set) a URL query parameter.
 */
export type AuthenticateTokenHook<P extends Principal> = (
  token: string,
  request: IncomingMessage,
) => P | null | undefined | Promise<P | null | undefined>;

/**
 * Decides whether `principal` may `action` the task. May be async. A hook that throws refuses.
 * The default allows exactly the task's owner: `task.owner === principal.id`.
 */
export type AuthorizeHook<P extends Principal> = (
  principal: P,
  task: Task,
  action: TaskAction,
) => boolean | Promise<boolean>;

/**
 * Which browser origins may open a socket or call the HTTP API (every route but `healthz`):
 * - `'same-origin'` (the default): the `Origin` header's scheme, host and port must equal the request's:
 *   its `Host` header, and `https` when the connection is TLS, else `http`. Behind a proxy that
 *   terminates TLS the request arrives as `http`, so list the public origin explicitly there;
 * - a list of exact origins, e.g. `['https://app.example.com']`;
 * - a predicate;
 * - `'*'`: any origin. **Insecure**: any web page a logged-in user visits can then open a socket with
 *   the user's cookies (cross-site WebSocket hijacking). Use it only when authentication never relies on
 *   cookies.
 *
 * Requests without an `Origin` header (non-browser clients: Node, curl) are always allowed: browsers
 * always send one on WebSocket upgrades and on cross-origin requests (a same-origin `GET` carries none),
 * so its absence cannot be forged by a page on another origin. The mutating HTTP routes are stricter:
 * with a cookie they require an `Origin`.
 */
export type AllowedOrigins =
  | 'same-origin'
  | '*'
  | readonly string[]
  | ((origin: string, request: IncomingMessage) => boolean);

/** The default authorization rule: the principal owns the task. */
export function ownerOnly(principal: Principal, task: Task): boolean {
  return task.owner === principal.id;
}

/** Whether the request's `Origin` (if any) is allowed by `allowed`. Never throws. */
export function isOriginAllowed(request: IncomingMessage, allowed: AllowedOrigins): boolean {
  const origin = request.headers.origin;
  if (origin === undefined) return true;
  try {
    if (allowed === '*') return true;
    if (allowed === 'same-origin') return isSameOrigin(origin, request);
    if (typeof allowed === 'function') return allowed(origin, request) === true;
    return allowed.includes(origin);
  } catch {
    // A malformed Origin header (or a predicate that throws) refuses rather than crashing the upgrade.
    return false;
  }
}

/** The port a URL uses, with the scheme's default filled in. */
function portOf(url: URL): string {
  if (url.port !== '') return url.port;
  return url.protocol === 'https:' ? '443' : '80';
}

/**
 * Whether `origin` is the origin the request was made to: same scheme (`https` only over TLS), same
 * host and same port. Comparing only the host let `https://host:port` through to an `http` server.
 */
function isSameOrigin(origin: string, request: IncomingMessage): boolean {
  const host = request.headers.host;
  if (host === undefined || host === '') return false;
  const from = new URL(origin);
  if (from.protocol !== 'http:' && from.protocol !== 'https:') return false;
  const scheme =
    (request.socket as { encrypted?: boolean } | undefined)?.encrypted === true ? 'https:' : 'http:';
  // A Host header is a name (or IP literal) and an optional port: nothing `new URL` could read as a path.
  if (!/^[A-Za-z0-9.\-[\]:]+$/.test(host)) return false;
  const to = new URL(`${scheme}//${host}`);
  return (
    from.protocol === to.protocol &&
    from.hostname.toLowerCase() === to.hostname.toLowerCase() &&
    portOf(from) === portOf(to)
  );
}

/** The token of an `Authorization: Bearer <token>` header, if any. */
export function bearerToken(request: IncomingMessage): string | undefined {
  const header = request.headers.authorization;
  if (header === undefined) return undefined;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match?.[1];
}

/** The value of query parameter `name` in the request URL, if any. */
export function queryToken(request: IncomingMessage, name: string): string | undefined {
  try {
    const value = new URL(request.url ?? '/', 'http://localhost').searchParams.get(name);
    return value === null || value === '' ? undefined : value;
  } catch {
    return undefined;
  }
}

/** The request's path without its query string. */
export function pathOf(url: string | undefined): string {
  if (url === undefined) return '/';
  const query = url.indexOf('?');
  return query === -1 ? url : url.slice(0, query);
}
