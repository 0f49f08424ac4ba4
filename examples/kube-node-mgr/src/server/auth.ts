import { createHmac, randomBytes, scryptSync, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';

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

/** Checks a password against a hash from {@link hashPassword}, in constant time. */
export function verifyPassword(password: string, stored: string): boolean {
  const [scheme, n, r, p, salt, hash] = stored.split('$');
  if (scheme !== 'scrypt' || salt === undefined || hash === undefined) return false;
  const expected = Buffer.from(hash, 'base64url');
  const actual = scryptSync(password, Buffer.from(salt, 'base64url'), expected.length, {
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
}

/** Reads `{ "users": [{ "username", "passwordHash" }] }`. */
export function loadUsersFile(path: string): UserRecord[] {
  const parsed = JSON.parse(readFileSync(path, 'utf8')) as { users?: unknown };
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
    return { username: user.username, passwordHash: user.passwordHash };
  });
}

/** The session carried by the signed cookie. */
export interface Session {
  username: string;
  /** Random per login; the CSRF token is derived from it. */
  sid: string;
  /** Expiry, epoch ms. */
  exp: number;
}

/** Name of the session cookie. */
export const SESSION_COOKIE = 'knm_session';
/** Header that must carry the CSRF token on state-changing requests. */
export const CSRF_HEADER = 'x-csrf-token';

/**
 * Stateless sessions: the cookie is `<payload b64url>.<HMAC-SHA256>` with a secret shared by every
 * replica, so any replica behind a load balancer without affinity accepts it. The CSRF token is an HMAC of
 * the session id (a synchronizer token that needs no server-side storage either).
 */
export class SessionManager {
  readonly #secret: Buffer;
  readonly #ttlMs: number;
  readonly #users: Map<string, UserRecord>;

  constructor(options: { secret: string; ttlMs: number; users: readonly UserRecord[] }) {
    if (options.secret.length < 16) throw new Error('the session secret must be at least 16 characters');
    this.#secret = Buffer.from(options.secret, 'utf8');
    this.#ttlMs = options.ttlMs;
    this.#users = new Map(options.users.map((u) => [u.username, u]));
  }

  /** Checks the credentials; a session on success. Unknown users cost a hash too (no timing oracle). */
  login(username: string, password: string): Session | null {
    const user = this.#users.get(username);
    const ok = verifyPassword(password, user?.passwordHash ?? DUMMY_HASH) && user !== undefined;
    if (!ok) return null;
    return { username, sid: randomBytes(16).toString('base64url'), exp: Date.now() + this.#ttlMs };
  }

  #sign(data: string): string {
    return createHmac('sha256', this.#secret).update(data).digest('base64url');
  }

  /** The `Set-Cookie` value for a session (`secure`: the request came over https). */
  cookie(session: Session, secure: boolean): string {
    const payload = Buffer.from(JSON.stringify(session)).toString('base64url');
    const value = `${payload}.${this.#sign(`session:${payload}`)}`;
    return serializeCookie(SESSION_COOKIE, value, {
      maxAgeS: Math.floor(this.#ttlMs / 1000),
      secure,
    });
  }

  /** The `Set-Cookie` value that removes the session cookie. */
  clearCookie(secure: boolean): string {
    return serializeCookie(SESSION_COOKIE, '', { maxAgeS: 0, secure });
  }

  /** The session of a request (from its cookie), or `null`. */
  fromRequest(request: IncomingMessage): Session | null {
    const raw = parseCookies(request.headers.cookie)[SESSION_COOKIE];
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
      if (!this.#users.has(session.username)) return null;
      return session;
    } catch {
      return null;
    }
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
