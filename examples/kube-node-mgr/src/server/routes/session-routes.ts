/** Sign-in, the session, sign-out. */

import type { Request, Response } from 'express';
import type { SessionView } from '../../shared/api-types.js';
import type { ApiRateLimit } from '../api-rate-limit.js';
import { HashQueueFullError, type Session, SessionStoreError, SignInLimitError } from '../auth.js';
import type { LoginThrottle } from '../login-throttle.js';
import type { RouteContext } from './context.js';

export function registerSessionRoutes(
  ctx: RouteContext,
  throttle: LoginThrottle,
  signIns: ApiRateLimit,
): void {
  const { app, config, sessions, fail, originAllowed, route, audit, dropSockets } = ctx;
  const secure = (req: Request) => req.secure;
  const sessionBody = (session: Session): SessionView => ({
    username: session.username,
    role: sessions.role(session),
    csrfToken: sessions.csrfToken(session),
  });

  app.post('/api/login', async (req: Request, res: Response) => {
    if (!originAllowed(req)) return fail(res, 403, 'forbidden_origin', 'origin not allowed');
    const { username, password } = (req.body ?? {}) as { username?: unknown; password?: unknown };
    if (typeof username !== 'string' || typeof password !== 'string' || username.length > 256) {
      return fail(res, 400, 'invalid_input', 'username and password are required');
    }
    const address = req.ip ?? req.socket.remoteAddress ?? 'unknown';
    const waitMs = throttle.begin(username, address);
    if (waitMs > 0) {
      const seconds = Math.ceil(waitMs / 1000);
      res.setHeader('retry-after', String(seconds));
      return fail(res, 429, 'too_many_attempts', `too many failed logins: try again in ${seconds} s`, {
        retryAfterS: seconds,
      });
    }
    let session: Session | null = null;
    // Whether the credentials were right; `null` while undecided: an error (the database down once the
    // password matched) is no failed guess, and counted as one it locked the account out after the outage.
    let ok: boolean | null = null;
    // The browser's previous session (its cookie is replaced below) ends with this sign-in, in the same write
    // as the new one is stored: left active, a copy of the old cookie (stolen, or left on a shared machine)
    // stayed valid until it expired, 12 h, though no page of this browser could use it any more.
    const previous = sessions.sidOf(req) ?? undefined;
    try {
      // Each sign-in writes a session and an audit event: one user (or a script with the password) signing in
      // in a loop grew both tables as fast as the hash queue let it.
      session = await sessions.login(username, password, previous, (user) => signIns.take(user));
      ok = session !== null;
    } catch (error) {
      if (error instanceof SignInLimitError) {
        const seconds = Math.ceil(error.waitMs / 1000);
        res.setHeader('retry-after', String(seconds));
        return fail(res, 429, 'too_many_sign_ins', `too many sign-ins: try again in ${seconds} s`, {
          retryAfterS: seconds,
        });
      }
      if (error instanceof SessionStoreError) {
        // The database is down: a moment to retry, not an internal error. Nothing was stored, so the browser's
        // previous session (if any) is still active, and no session exists without its cookie.
        config.logger?.warn({ err: String(error.cause) }, 'session not stored');
        res.setHeader('retry-after', '1');
        return fail(res, 503, 'store_unavailable', 'the session could not be stored; try again in a moment', {
          retryAfterS: 1,
        });
      }
      if (!(error instanceof HashQueueFullError)) throw error;
      // A flood of logins (many addresses: each one's own throttle lets it through): refused before its hash,
      // so the logins let in wait behind a bounded queue. A moment to retry, not a failed guess.
      res.setHeader('retry-after', '1');
      return fail(res, 503, 'login_busy', 'too many logins at once: try again in a moment', {
        retryAfterS: 1,
      });
    } finally {
      throttle.end(username, address, ok);
    }
    if (session === null) return fail(res, 401, 'bad_credentials', 'wrong username or password');
    // The previous session's sockets are closed as a logout closes them.
    if (previous !== undefined) dropSockets(previous);
    await audit({ username: session.username, action: 'login', taskId: null });
    res.setHeader('set-cookie', sessions.cookie(session, secure(req)));
    res.json(sessionBody(session));
  });

  route('get', '/api/session', {}, (_req, res, session) => {
    res.json(sessionBody(session));
  });

  route('post', '/api/logout', {}, async (req, res, session) => {
    await sessions.logout(session);
    dropSockets(session.sid);
    await audit({ username: session.username, action: 'logout', taskId: null });
    res.setHeader('set-cookie', sessions.clearCookie(secure(req)));
    res.json({ ok: true });
  });
}
