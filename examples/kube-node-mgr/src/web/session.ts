/**
 * The end of the signed-in session on this page. A 401 to any call made while signed in (the session expired,
 * or was logged out in another tab) ends it: each module drops what belonged to the user, so the next person
 * at the login form, or the next user signed in, never sees the previous one's jobs.
 */

const resets: (() => void)[] = [];
let generation = 0;

/** Registers what a module drops when the session ends (rows, dialogs, watches, timers). */
export function onSessionEnd(reset: () => void): void {
  resets.push(reset);
}

/** Ends the session on the page: every registered reset runs, and answers to earlier requests go stale. */
export function endSession(): void {
  generation++;
  for (const reset of resets) reset();
}

/**
 * The session a request was made in: compare it after the `await` with {@link sameSession}, since an
 * answer sent to the old session (or its 401) may arrive after the next user signed in.
 */
export const sessionMark = (): number => generation;
export const sameSession = (mark: number): boolean => mark === generation;

let mismatch: () => void = () => {};

/** Registers what checks the browser's session again when it may no longer be the page's (see below). */
export function onSessionMismatch(check: () => void): void {
  mismatch = check;
}

/**
 * The cookie may name another session than the page's: a POST was refused for its CSRF token (someone
 * signed in again in another tab). The registered check reads the session and takes it.
 */
export function sessionMismatch(): void {
  mismatch();
}
