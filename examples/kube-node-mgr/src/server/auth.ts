import {
  createHmac,
  randomBytes,
  type ScryptOptions,
  scrypt,
  scryptSync,
  timingSafeEqual,
} from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { ROLE_ORDER, type Role } from '../shared/api-types.js';
import type { AppDb } from './app-db.js';

/** scrypt parameters of new hashes (N = 2^14, r = 8, p = 1: ~16 MiB, tens of ms). */
const SCRYPT = { N: 16384, r: 8, p: 1, keyLength: 32 };

/** Hashes a password as `scrypt$N$r$p$<salt b64url>$<hash b64url>`. */
export function hashPassword(password: string): string {
  const salt = randomBytes(16);
  const hash = scryptSync(password, salt, SCRYPT.keyLength, { N: SCRYPT.N, r: SCRYPT.r, p: SCRYPT.p });
  return [
    'scrypt',
    SCRYPT.N,
    SCRYPT.r,
    SCRYPT.p,
    salt.toString('base64url'),
    hash.toString('base64url'),
  ].join('$');
}

/**
 * Hashes running at once. libuv's pool has 4 threads shared with file and DNS work; a login flood must
 * neither take all of them nor every core from the event loop, so further hashes wait their turn.
 */
const MAX_CONCURRENT_HASHES = 2;
/**
 * Hashes that may wait their turn. Past it a login is refused at once ({@link HashQueueFullError}: 503 with
 * `Retry-After`) instead of queued: the throttle bounds each address, not a flood from many addresses, and an
 * unbounded queue made every user's login wait behind all of the flood's hashes. With it a login let in
 * waits for at most this many hashes (about 32 × tens of ms / 2 threads: well under a second).
 */
export const MAX_QUEUED_HASHES = 32;
let hashesRunning = 0;
const hashQueue: (() => void)[] = [];

/** A password check refused because {@link MAX_QUEUED_HASHES} hashes wait already (a login flood). */
export class HashQueueFullError extends Error {
  constructor() {
    super('too many logins at once');
    this.name = 'HashQueueFullError';
  }
}

/**
 * A login whose credentials matched, refused by the caller's limit on sign-ins (`admit` of
 * {@link SessionManager.login}): nothing was stored. `waitMs`: until the next one would be let in.
 */
export class SignInLimitError extends Error {
  readonly waitMs: number;
  constructor(waitMs: number) {
    super('too many sign-ins');
    this.name = 'SignInLimitError';
    this.waitMs = waitMs;
  }
}

/** A login whose credentials matched but whose session the database could not store (an outage). */
export class SessionStoreError extends Error {
  constructor(cause: unknown) {
    super('the session could not be stored', { cause });
    this.name = 'SessionStoreError';
  }
}

async function scryptAsync(
  password: string,
  salt: Buffer,
  length: number,
  options: ScryptOptions,
): Promise<Buffer> {
  if (hashesRunning >= MAX_CONCURRENT_HASHES) {
    if (hashQueue.length >= MAX_QUEUED_HASHES) throw new HashQueueFullError();
    await new Promise<void>((resolve) => hashQueue.push(resolve));
  }
  hashesRunning++;
  try {
    return await new Promise((resolve, reject) => {
      scrypt(password, salt, length, options, (error, key) => (error ? reject(error) : resolve(key)));
    });
  } finally {
    hashesRunning--;
    hashQueue.shift()?.();
  }
}

/**
 * Checks a password against a hash from {@link hashPassword}, in constant time. Asynchronous: the hash
 * (tens of ms) runs on libuv's thread pool instead of blocking the event loop that delivers progress.
 * Rejects with {@link HashQueueFullError} when {@link MAX_QUEUED_HASHES} hashes wait their turn already.
 */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const [scheme, n, r, p, salt, hash] = stored.split('$');
  if (scheme !== 'scrypt' || salt === undefined || hash === undefined) return false;
  const expected = Buffer.from(hash, 'base64url');
  const actual = await scryptAsync(password, Buffer.from(salt, 'base64url'), expected.length, {
    N: Number(n),
    r: Number(r),
    p: Number(p),
    maxmem: 256 * 1024 * 1024,
  });
  return actual.length === expected.length && timingSafeEqual(actual, expected);
}

/** A configured user. */
export interface UserRecord {
  username: string;
  passwordHash: string;
  /** @default 'operator' */
  role?: Role;
}

/** Reads `{ "users": [{ "username", "passwordHash", "role"? }] }` (role: admin, operator or viewer). */
export function loadUsersFile(path: string): UserRecord[] {
  let parsed: { users?: unknown };
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8')) as { users?: unknown };
  } catch (error) {
    // JSON.parse's message names no file: "Unexpected token 'u', "users: [" is not valid JSON".
    throw new Error(`${path}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }
  if (typeof parsed !== 'object' || parsed === null)
    throw new Error(`${path}: must be a JSON object with a "users" list`);
  if (!Array.isArray(parsed.users) || parsed.users.length === 0)
    throw new Error(`${path}: "users" must be a non-empty list`);
  return parsed.users.map((u: unknown, i: number) => {
    const user = u as Partial<UserRecord>;
    if (typeof user.username !== 'string' || !/^[a-z0-9][a-z0-9._-]{0,63}$/i.test(user.username)) {
      throw new Error(`${path}: users[${i}].username must be 1-64 letters, digits, '.', '_' or '-'`);
    }
    if (typeof user.passwordHash !== 'string' || !user.passwordHash.startsWith('scrypt$')) {
      throw new Error(`${path}: users[${i}].passwordHash must be a scrypt hash (npm run hash-password)`);
    }
    if (user.role !== undefined && !ROLES.includes(user.role)) {
      throw new Error(`${path}: users[${i}].role must be one of ${ROLES.join(', ')}`);
    }
    return { username: user.username, passwordHash: user.passwordHash, role: user.role ?? 'operator' };
  });
}

/** What a user may do: a viewer watches every task and changes nothing; an operator runs batches and
 * cancels its own; an admin also cancels anyone's. */
export type { Role };
/** The roles, weakest first. */
export const ROLES: readonly Role[] = ROLE_ORDER;

/** The session carried by the signed cookie. */
export interface Session {
  username: string;
  /** Random per login; the server-side session row's key, and the CSRF token is derived from it. */
  sid: string;
  /** Expiry, epoch ms. */
  exp: number;
}

/** Name of the session cookie over http. */
export const SESSION_COOKIE = 'knm_session';
/**
 * Name of the session cookie over https. The `__Host-` prefix makes the browser keep it only when set
 * `Secure`, `Path=/` and without `Domain` by this very host, so neither a sibling subdomain nor a plain-http
 * answer (a network attacker's) can plant one: a valid cookie of the attacker's own session, planted as
 * `knm_session`, signed the victim in as the attacker (the HMAC stops forged cookies, not real ones).
 */
export const SECURE_SESSION_COOKIE = '__Host-knm_session';
/** Header that must carry the CSRF token on state-changing requests. */
export const CSRF_HEADER = 'x-csrf-token';

/**
 * Server-side sessions behind a signed cookie: the cookie is `<payload b64url>.<HMAC-SHA256>` with a secret
 * shared by every replica (a forged cookie is refused without a database read), and the session id in it
 * must name a row of `knm_sessions` that is neither revoked nor expired, so logout on one replica ends the
 * session on all of them. The CSRF token is an HMAC of the session id.
 */
export class SessionManager {
  readonly #secret: Buffer;
  readonly #ttlMs: number;
  readonly #users: Map<string, UserRecord>;
  readonly #db: AppDb;
  #isHttps: (request: IncomingMessage) => boolean = (request) =>
    (request.socket as { encrypted?: boolean } | undefined)?.encrypted === true;

  constructor(options: { secret: string; ttlMs: number; users: readonly UserRecord[]; db: AppDb }) {
    if (options.secret.length < 16) throw new Error('the session secret must be at least 16 characters');
    this.#secret = Buffer.from(options.secret, 'utf8');
    this.#ttlMs = options.ttlMs;
    this.#users = new Map(options.users.map((u) => [u.username, u]));
    this.#db = options.db;
  }

  /**
   * Checks the credentials; a new stored session on success, with `replaces` (the browser's previous
   * session) revoked in the same write. Unknown users cost a hash too (no timing oracle). The hash runs on
   * libuv's thread pool, so logins never stall the event loop. Rejects with {@link SessionStoreError} when
   * the session could not be stored (nothing was: the previous session is still active), and with
   * {@link SignInLimitError} when `admit` (asked once the password matched) answers a wait.
   */
  async login(
    username: string,
    password: string,
    replaces?: string,
    admit?: (username: string) => number,
  ): Promise<Session | null> {
    const user = this.#users.get(username);
    const ok = (await verifyPassword(password, user?.passwordHash ?? DUMMY_HASH)) && user !== undefined;
    if (!ok) return null;
    // Asked only once the password matched: a refusal tells nothing to whoever does not know it.
    const waitMs = admit?.(username) ?? 0;
    if (waitMs > 0) throw new SignInLimitError(waitMs);
    const session = { username, sid: randomBytes(16).toString('base64url'), exp: Date.now() + this.#ttlMs };
    try {
      await this.#db.createSession({
        sid: session.sid,
        username,
        expiresAt: session.exp,
        ...(replaces !== undefined && replaces !== session.sid ? { replaces } : {}),
      });
    } catch (error) {
      throw new SessionStoreError(error);
    }
    return session;
  }

  /** Revokes the session everywhere: its cookie is refused from now on, over HTTP and at the upgrade. */
  async logout(session: Pick<Session, 'sid'>): Promise<void> {
    await this.#db.revokeSession(session.sid);
  }

  /** Whether the stored session is still active (for sockets opened before a logout). */
  active(sid: string): Promise<boolean> {
    return this.#db.sessionActive(sid);
  }

  /** The role of a session's user. */
  role(session: Session): Role {
    return this.#users.get(session.username)?.role ?? 'viewer';
  }

  #sign(data: string): string {
    return createHmac('sha256', this.#secret).update(data).digest('base64url');
  }

  /**
   * How to tell a request came over https, and so carries {@link SECURE_SESSION_COOKIE} (the only one read
   * then): the app's, which believes a trusted proxy's `X-Forwarded-Proto`. By default: over TLS itself.
   */
  readSchemeWith(isHttps: (request: IncomingMessage) => boolean): void {
    this.#isHttps = isHttps;
  }

  /** The `Set-Cookie` value for a session (`secure`: the request came over https). */
  cookie(session: Session, secure: boolean): string {
    const payload = Buffer.from(JSON.stringify(session)).toString('base64url');
    const value = `${payload}.${this.#sign(`session:${payload}`)}`;
    return serializeCookie(secure ? SECURE_SESSION_COOKIE : SESSION_COOKIE, value, {
      maxAgeS: Math.floor(this.#ttlMs / 1000),
      secure,
    });
  }

  /** The `Set-Cookie` value that removes the session cookie. */
  clearCookie(secure: boolean): string {
    return serializeCookie(secure ? SECURE_SESSION_COOKIE : SESSION_COOKIE, '', { maxAgeS: 0, secure });
  }

  /** The session of a request's cookie when its signature holds, without the database check. */
  #decode(request: IncomingMessage): Session | null {
    const name = this.#isHttps(request) ? SECURE_SESSION_COOKIE : SESSION_COOKIE;
    const raw = parseCookies(request.headers.cookie)[name];
    if (raw === undefined) return null;
    const dot = raw.indexOf('.');
    if (dot <= 0) return null;
    const payload = raw.slice(0, dot);
    const mac = Buffer.from(raw.slice(dot + 1));
    const expected = Buffer.from(this.#sign(`session:${payload}`));
    if (mac.length !== expected.length || !timingSafeEqual(mac, expected)) return null;
    try {
      const session = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Session;
      if (typeof session.exp !== 'number' || session.exp <= Date.now()) return null;
      if (typeof session.sid !== 'string' || !this.#users.has(session.username)) return null;
      return session;
    } catch {
      return null;
    }
  }

  /** The username of a request's validly signed cookie (its session active or not), or `null`. */
  userOf(request: IncomingMessage): string | null {
    return this.#decode(request)?.username ?? null;
  }

  /** The session id of a request's validly signed cookie (active or not), or `null`. */
  sidOf(request: IncomingMessage): string | null {
    return this.#decode(request)?.sid ?? null;
  }

  /** The session of a request (from its cookie) if it is still active in the store, or `null`. */
  async fromRequest(request: IncomingMessage): Promise<Session | null> {
    const session = this.#decode(request);
    if (session === null) return null;
    return (await this.#db.sessionActive(session.sid)) ? session : null;
  }

  /** The CSRF token of a session. */
  csrfToken(session: Session): string {
    return this.#sign(`csrf:${session.sid}`);
  }

  /** Whether a request carries its session's CSRF token. */
  checkCsrf(session: Session, request: IncomingMessage): boolean {
    const header = request.headers[CSRF_HEADER];
    if (typeof header !== 'string') return false;
    const got = Buffer.from(header);
    const expected = Buffer.from(this.csrfToken(session));
    return got.length === expected.length && timingSafeEqual(got, expected);
  }
}

const DUMMY_HASH = hashPassword(randomBytes(8).toString('hex'));

function serializeCookie(name: string, value: string, options: { maxAgeS: number; secure: boolean }): string {
  return [
    `${name}=${value}`,
    'Path=/',
    'HttpOnly',
    'SameSite=Lax',
    `Max-Age=${options.maxAgeS}`,
    ...(options.secure ? ['Secure'] : []),
  ].join('; ');
}

/** Parses a `Cookie` header. */
export function parseCookies(header: string | undefined): Record<string, string> {
  const cookies: Record<string, string> = {};
  for (const part of (header ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq <= 0) continue;
    const name = part.slice(0, eq).trim();
    if (!(name in cookies)) cookies[name] = part.slice(eq + 1).trim();
  }
  return cookies;
}
