/**
 * Runs the application's auth hooks for the server: credentials from an upgrade or an `auth` frame, the
 * default owner-only authorization, and a hook that throws treated as a refusal.
 *
 * @module
 */
import type { IncomingMessage } from 'node:http';
import type { Task } from '@finishline/core';
import { LIMITS } from '@finishline/core';
import { idProblem } from '@finishline/core/internal';
import { type AddressAuthLimits, AuthRateLimited } from './address-auth-limits.js';
import type {
  AuthenticateHook,
  AuthenticateTokenHook,
  AuthorizeHook,
  Principal,
  TaskAction,
} from './auth.js';
import { bearerToken } from './auth.js';
import { HttpError, queryParam } from './http/http-request.js';
import type { ProgressLogger } from './logger.js';
import { describeError } from './logger.js';

/**
 * Where an authentication attempt came from (label `via` of `auth_rate_limited_total`): an HTTP request
 * (a Server-Sent Events stream's included), a WebSocket upgrade (a socket of a `wss` you pass included),
 * or a socket's `auth` frame.
 */
export type AuthAttemptVia = 'http' | 'upgrade' | 'auth_frame';

/** What an upgrade's credentials established. */
export type UpgradeAuth<P> =
  | { kind: 'principal'; principal: P }
  /** No credentials at the upgrade, but the socket may authenticate with a first `auth` frame. */
  | { kind: 'deferred' }
  /** The address is out of authentication attempts (`authRateLimitPerAddressPerSecond`): no hook ran. */
  | { kind: 'limited'; retryAfterSeconds: number }
  | { kind: 'refused' }
  /** The request is malformed (its token parameter given more than once): no hook ran. */
  | { kind: 'invalid'; message: string };

/**
 * The value of query parameter `name` in the request URL, if any (here rather than in `auth.ts`, which
 * the HTTP layer imports, so that `queryParam` is reused without an import cycle).
 *
 * @throws HttpError `invalid_input` (400) when the parameter is given more than once, as the HTTP API
 * refuses a repeated parameter it reads: the first was taken, while a proxy or firewall in front may
 * read the last (or all), so the two could judge one upgrade by different tokens.
 */
export function queryToken(request: IncomingMessage, name: string): string | undefined {
  let url: URL;
  try {
    url = new URL(request.url ?? '/', 'http://localhost');
  } catch {
    return undefined;
  }
  const value = queryParam(url, name);
  return value === null || value === '' ? undefined : value;
}

/**
 * Runs the application's authentication and authorization hooks the same way for upgrades, `auth`
 * frames and HTTP requests. Authentication hooks that throw propagate (the caller answers 500 / 1011);
 * an authorization hook that throws refuses.
 */
export class Authenticator<P extends Principal> {
  readonly #authenticate: AuthenticateHook<P> | undefined;
  readonly #authenticateToken: AuthenticateTokenHook<P> | undefined;
  readonly #authorize: AuthorizeHook<P>;
  readonly #tokenQueryParam: string | false;
  readonly #logger: ProgressLogger;
  readonly #limits: AddressAuthLimits | undefined;
  readonly #onLimited: ((via: AuthAttemptVia) => void) | undefined;
  /**
   * Upgrades deferred to their `auth` frame whose run of `authenticate` took an attempt: given back when
   * the socket's frame authenticates. Kept, a browser client behind a NAT (cookie hook finding nothing,
   * token in the first frame) paid one attempt per connection, and a reload storm of valid clients
   * spent the address's budget.
   */
  readonly #deferredAttempts = new WeakSet<IncomingMessage>();
  /** Whether a principal id that can own no task was reported (once per server: it is a setup error). */
  #warnedUnownableId = false;

  constructor(options: {
    authenticate: AuthenticateHook<P> | undefined;
    authenticateToken: AuthenticateTokenHook<P> | undefined;
    authorize: AuthorizeHook<P>;
    tokenQueryParam: string | false;
    logger: ProgressLogger;
    /** The per-address budget of failed attempts; none: unlimited. */
    limits?: AddressAuthLimits | undefined;
    /** An attempt was refused for its address's budget (no hook ran): counted by the server. */
    onLimited?: ((via: AuthAttemptVia) => void) | undefined;
  }) {
    this.#limits = options.limits;
    this.#onLimited = options.onLimited;
    this.#authenticate = options.authenticate;
    this.#authenticateToken = options.authenticateToken;
    this.#authorize = options.authorize;
    this.#tokenQueryParam = options.tokenQueryParam;
    this.#logger = options.logger;
  }

  /** Whether sockets may authenticate with a first `auth` frame. */
  get acceptsTokenFrames(): boolean {
    return this.#authenticateToken !== undefined;
  }

  /**
   * The principal of an upgrade: `authenticate(request)`, else a bearer header or (when enabled) the
   * query token through `authenticateToken`. Credentials that were presented and rejected refuse;
   * none at all defer to the first frame when token frames are accepted.
   */
  async fromUpgrade(request: IncomingMessage): Promise<UpgradeAuth<P>> {
    const token = this.#upgradeToken(request);
    // Before any hook and any attempt of the address: a malformed request, not a failed credential.
    if (token instanceof HttpError) return { kind: 'invalid', message: token.message };
    const tokenChecked = token !== undefined && this.#authenticateToken !== undefined;
    const charged = this.#authenticate !== undefined || tokenChecked;
    if (charged) {
      const retryAfterSeconds = this.#limited(request, 'upgrade');
      if (retryAfterSeconds !== undefined) return { kind: 'limited', retryAfterSeconds };
    }
    const direct = await this.#fromRequest(request);
    if (direct !== undefined) return this.#succeeded(request, { kind: 'principal', principal: direct });
    if (tokenChecked) {
      const principal = await this.#fromToken(token, request);
      return principal === undefined
        ? { kind: 'refused' }
        : this.#succeeded(request, { kind: 'principal', principal });
    }
    if (this.#authenticateToken === undefined) return { kind: 'refused' };
    // Not an upgrade with an `Authorization` header (Basic, say): `authenticate` refused credentials there,
    // maybe a guessed password, and paid back after any valid frame, one account's token let a client guess
    // others' passwords without spending its budget. (A browser's upgrade carries no such header.)
    if (charged && request.headers.authorization === undefined) this.#deferredAttempts.add(request);
    return { kind: 'deferred' };
  }

  /** An upgrade's token: a bearer header, else (when enabled) the query's; its refusal when malformed. */
  #upgradeToken(request: IncomingMessage): string | undefined | HttpError {
    try {
      return (
        bearerToken(request) ??
        (this.#tokenQueryParam === false ? undefined : queryToken(request, this.#tokenQueryParam))
      );
    } catch (error) {
      if (error instanceof HttpError) return error;
      throw error;
    }
  }

  /** The principal of an HTTP request: `authenticate(request)`, else a bearer token. */
  async fromHttp(request: IncomingMessage): Promise<P | undefined> {
    const token = bearerToken(request);
    const tokenChecked = token !== undefined && this.#authenticateToken !== undefined;
    if (this.#authenticate !== undefined || tokenChecked) this.#take(request, 'http');
    const direct = await this.#fromRequest(request);
    if (direct !== undefined) return this.#succeeded(request, direct);
    if (!tokenChecked) return undefined;
    const principal = await this.#fromToken(token, request);
    return principal === undefined ? undefined : this.#succeeded(request, principal);
  }

  /**
   * The principal a token stands for, or `undefined`.
   *
   * @throws AuthRateLimited when the request's address is out of attempts (the hook did not run).
   */
  async fromToken(token: string, request: IncomingMessage): Promise<P | undefined> {
    if (this.#authenticateToken === undefined) return undefined;
    this.#take(request, 'auth_frame');
    const principal = await this.#fromToken(token, request);
    if (principal === undefined) return undefined;
    // The upgrade's attempt too: the socket's client had valid credentials after all (see #deferredAttempts).
    if (this.#deferredAttempts.delete(request)) this.#limits?.succeeded(request);
    return this.#succeeded(request, principal);
  }

  /**
   * The principal a renewal's token stands for (an `auth` frame on a socket that already authenticated),
   * or `undefined`. Not refused for the address's budget of failed attempts, which bounds the hook calls
   * of parties that never authenticated: refused, a renewal from an address whose budget others had spent
   * (behind one NAT or proxy) closed its working socket with 4008, so anyone there sending bad tokens
   * disconnected every user at their next renewal. What bounds renewals is the principal's frame budget
   * they pay and their one check at a time per socket. A renewal that fails (or whose hook throws) is
   * charged to the budget after the fact, so guessing tokens over renewals spends it still: each failure
   * also closes its socket, and an address out of attempts authenticates no new one. One that succeeds
   * took nothing and gives nothing back (a valid token renewed over and over would refill the budget).
   */
  async fromRenewal(token: string, request: IncomingMessage): Promise<P | undefined> {
    if (this.#authenticateToken === undefined) return undefined;
    let principal: P | undefined;
    try {
      principal = await this.#fromToken(token, request);
    } catch (error) {
      this.#limits?.take(request);
      throw error;
    }
    // Taken without refusing: there is nothing left to refuse once the hook ran.
    if (principal === undefined) this.#limits?.take(request);
    return principal;
  }

  async #fromToken(token: string, request: IncomingMessage): Promise<P | undefined> {
    if (this.#authenticateToken === undefined || token.length > LIMITS.maxTokenLength) return undefined;
    return this.#checked(await this.#authenticateToken(token, request));
  }

  /**
   * Takes an attempt of the request's address before a hook runs. Only failures keep it (see
   * {@link AddressAuthLimits}); a hook that throws keeps it too.
   */
  #take(request: IncomingMessage, via: AuthAttemptVia): void {
    const retryAfterSeconds = this.#limited(request, via);
    if (retryAfterSeconds !== undefined) throw new AuthRateLimited(retryAfterSeconds);
  }

  /** Takes an attempt: `undefined` when allowed, else the seconds to wait (the refusal is reported). */
  #limited(request: IncomingMessage, via: AuthAttemptVia): number | undefined {
    const retryAfterSeconds = this.#limits?.take(request);
    if (retryAfterSeconds !== undefined) this.#onLimited?.(via);
    return retryAfterSeconds;
  }

  #succeeded<T>(request: IncomingMessage, result: T): T {
    this.#limits?.succeeded(request);
    return result;
  }

  /** Whether `principal` may `action` the task; a hook that throws or returns a non-boolean refuses. */
  async authorize(principal: P, task: Task, action: TaskAction): Promise<boolean> {
    try {
      return (await this.#authorize(principal, task, action)) === true;
    } catch (error) {
      this.#logger.error(
        { err: describeError(error), taskId: task.id, action },
        'authorize hook threw; refusing',
      );
      return false;
    }
  }

  async #fromRequest(request: IncomingMessage): Promise<P | undefined> {
    if (this.#authenticate === undefined) return undefined;
    return this.#checked(await this.#authenticate(request));
  }

  #checked(value: P | null | undefined): P | undefined {
    if (value === null || value === undefined) return undefined;
    if (typeof value !== 'object' || typeof value.id !== 'string' || value.id === '') {
      this.#logger.error({}, 'authentication hook returned a principal without a string id; refusing');
      return undefined;
    }
    if (!this.#warnedUnownableId && idProblem(value.id) !== undefined) {
      // Accepted (a custom `authorize` may not look at owners), but an identity provider's subject taken
      // as it is (`auth0|…`, `google-oauth2|…`) found the default authorization refusing every task and
      // `GET …/tasks` answering 400, with nothing saying why. The rule of owners is the rule of ids,
      // reserved names included (a user named `constructor` was not warned about).
      this.#warnedUnownableId = true;
      this.#logger.warn(
        { principalId: value.id.slice(0, LIMITS.maxIdLength) },
        `authentication hook returned a principal id that can own no task (owners are 1-${LIMITS.maxIdLength} letters, digits and _ . : @ / -, not __proto__, constructor or prototype): the default authorization refuses it every task; map the id (for example | to :)`,
      );
    }
    return value;
  }
}
