/**
 * The authentication and authorization hooks an application plugs in (`authenticate`, `authenticateToken`,
 * `authorize`), the `Principal` they produce, and the default token extraction from headers and query.
 *
 * @module
 */
import type { IncomingMessage } from 'node:http';
import type { Task } from '@finishline/core';
import { boolean, resolveOptions } from '@finishline/core/internal';

/**
 * Who is asking. Finishline only reads `id` (the default authorization compares it with a task's
 * `owner`); applications may carry more (roles, tenant) in a subtype and read it in their `authorize`.
 */
export interface Principal {
  /**
   * Who it is. The default authorization lets a principal watch and cancel the tasks whose `owner` is this
   * id, and `GET …/tasks` lists them, so it must be a valid owner: 1 to 128 letters, digits and
   * `_ . : @ / -`. Map an identity provider's subject that has other characters (`auth0|5f7c…` to
   * `auth0:5f7c…`, say) in the authentication hook and when creating tasks; the server warns once when a
   * hook returns an id that can own no task.
   */
  readonly id: string;
  /**
   * When the credential this principal came from stops being valid, in epoch milliseconds of the
   * server's clock. A socket whose credential expires gets `token_expired` and close code 4011 at that
   * moment, unless the client renewed it with an `auth` frame before (protocol version 2); an HTTP
   * request or event stream gets 401 `token_expired` (a stream ends then). Omitted: the credential never
   * expires for the server. A value that is not a time (`NaN`, say `claims.exp * 1000` of a token without
   * `exp`) counts as expired.
   */
  readonly expiresAt?: number;
}

/**
 * Whether `principal`'s credential has expired at `now`: its `expiresAt` is not after now, `NaN` included.
 * An expiry that is not a time (`claims.exp * 1000` of a token without `exp`) never passed, so such a
 * credential lasted for ever, and a socket's expiry timer (`NaN` fires after 1 ms) re-armed itself every
 * millisecond.
 */
export function credentialExpired(principal: Principal, now: number): boolean {
  return principal.expiresAt !== undefined && !(principal.expiresAt > now);
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
 *
 * Unless the server's `revealTaskExistence` is on, it is also asked about a task id that does not exist,
 * with a stand-in task of that id whose `owner` is `''` (no real task has one) and whose answer is ignored:
 * the refusal of a missing task then waits for the same calls as another owner's, and a hook that takes
 * time (a database query) does not tell the two apart by how soon the answer comes.
 */
export type AuthorizeHook<P extends Principal> = (
  principal: P,
  task: Task,
  action: TaskAction,
) => boolean | Promise<boolean>;

/**
 * Which browser origins may open a socket or call the HTTP API (every route but `healthz` and `livez`):
 * - `'same-origin'` (the default): the `Origin` header's scheme, host and port must equal the request's:
 *   its `Host` header, and `https` when the connection is TLS, else `http`. Behind a proxy that
 *   terminates TLS the request arrives as `http`: use {@link sameOrigin}`({ trustProxy: true })` there,
 *   or list the public origins;
 * - a list of exact origins, e.g. `['https://app.example.com']`, each as browsers send it (lower case, no
 *   path, no trailing slash, no default port): another entry throws `invalid_input` at construction;
 * - a synchronous predicate (one that throws, or answers anything but `true`, a promise included, refuses);
 * - `'*'`: any origin. **Insecure**: any web page a logged-in user visits can then open a socket with
 *   the user's cookies (cross-site WebSocket hijacking), read the HTTP API's answers (an allowed
 *   origin gets CORS headers with credentials) and send its `POST`s (cancel the user's tasks). Use it
 *   only when authentication never relies on cookies.
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
const ignoreRejection = (): void => {};

export function isOriginAllowed(request: IncomingMessage, allowed: AllowedOrigins): boolean {
  const origin = request.headers.origin;
  if (origin === undefined) return true;
  try {
    if (allowed === '*') return true;
    if (allowed === 'same-origin') return isSameOrigin(origin, request);
    if (typeof allowed === 'function') {
      const verdict: unknown = allowed(origin, request);
      // An `async` predicate is no verdict (refused), and its rejection, left unhandled, ended the process.
      if (typeof (verdict as PromiseLike<unknown> | null)?.then === 'function') {
        (verdict as PromiseLike<unknown>).then(undefined, ignoreRejection);
      }
      return verdict === true;
    }
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

/** Options of {@link sameOrigin}. */
export interface SameOriginOptions {
  /**
   * Take the request's scheme from the first value of its `X-Forwarded-Proto` header (`http` or `https`;
   * any other value is ignored) instead of from the connection. Set it only behind a proxy that sets that
   * header: one that terminates TLS hands the server plain `http` requests while browsers send
   * `Origin: https://…`, so plain `'same-origin'` refuses every page there. A page cannot forge the header
   * on a WebSocket upgrade (browsers let scripts set no header on it) nor on a cross-origin request
   * without a CORS preflight the server does not answer.
   * @default false
   */
  trustProxy?: boolean | undefined;
}

const SAME_ORIGIN_OPTIONS = { trustProxy: boolean(false) } satisfies {
  [K in keyof Required<SameOriginOptions>]: unknown;
};

/**
 * The `'same-origin'` rule as a predicate for `allowedOrigins`, with options: `sameOrigin({ trustProxy:
 * true })` behind a proxy that terminates TLS.
 *
 * @throws ProgressError `invalid_input` when `trustProxy` is not a boolean, or for an unknown option.
 */
export function sameOrigin(
  options: SameOriginOptions = {},
): (origin: string, request: IncomingMessage) => boolean {
  // Unknown keys refused, naming the nearest: `{ trustProxies: true }` left the proxy untrusted, and every
  // upgrade through it was refused 403 with nothing saying why.
  const { trustProxy } = resolveOptions('sameOrigin', SAME_ORIGIN_OPTIONS, options);
  return (origin, request) => isSameOrigin(origin, request, trustProxy);
}

/** The scheme a proxy says the request came over: the first `X-Forwarded-Proto` value, if it is one. */
function forwardedScheme(request: IncomingMessage): 'http:' | 'https:' | undefined {
  const header = request.headers['x-forwarded-proto'];
  const first = (Array.isArray(header) ? header[0] : header)?.split(',')[0]?.trim().toLowerCase();
  return first === 'http' || first === 'https' ? `${first}:` : undefined;
}

/**
 * Whether `origin` is the origin the request was made to: same scheme (`https` only over TLS, or as the
 * trusted proxy says), same host and same port. Comparing only the host let `https://host:port` through to
 * an `http` server.
 */
function isSameOrigin(origin: string, request: IncomingMessage, trustProxy = false): boolean {
  const host = request.headers.host;
  if (host === undefined || host === '') return false;
  const from = new URL(origin);
  if (from.protocol !== 'http:' && from.protocol !== 'https:') return false;
  const scheme =
    (trustProxy ? forwardedScheme(request) : undefined) ??
    ((request.socket as { encrypted?: boolean } | undefined)?.encrypted === true ? 'https:' : 'http:');
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

/**
 * Whether `path` can be the path of a request as clients send it, compared as it comes (see
 * {@link pathOf}): only the characters a URL carries in a path as they are (RFC 3986 `pchar` and `/`, and
 * `[ ] | ^`, which browsers and `fetch` send unescaped too, so such a path was served to them and still is),
 * a `%` only in a `%XX` escape, and no `.` or `..` segment. A client's URL library percent-encodes any other
 * character (`/progrès` is sent as `/progr%C3%A8s`, `/a b` as `/a%20b`), cuts the path at `?` or `#`, and
 * removes dot segments, so a server path holding one was accepted and matched no request: every upgrade
 * and API request was a 404. A path with escapes (`/progr%C3%A8s`) is matched as written.
 */
export function isRequestPath(path: string): boolean {
  return (
    /^(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/[\]|^]|%[0-9A-Fa-f]{2})*$/.test(path) &&
    !path.split('/').some((segment) => segment === '.' || segment === '..')
  );
}

/**
 * The request's path without its query string. A target in absolute form (`http://host/path`, what a
 * client sends through a forward proxy, and which RFC 9112 §3.2.2 says a server must accept) is taken
 * by its path: compared whole, it matched no route (404). Parsed no further than that (no `new URL`),
 * so that the segments stay as sent: `.` and `..` are task ids, not steps up the path.
 */
export function pathOf(url: string | undefined): string {
  if (url === undefined) return '/';
  const authority = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*/.exec(url)?.[0];
  const rest = authority === undefined ? url : url.slice(authority.length);
  const target = authority === undefined || rest.startsWith('/') ? rest : `/${rest}`;
  const query = target.indexOf('?');
  return query === -1 ? target : target.slice(0, query);
}
