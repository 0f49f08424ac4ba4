/**
 * The `Host` check against DNS rebinding, shared by the app and the demo cluster's API: a web page whose name
 * the attacker makes resolve to 127.0.0.1 reaches a server listening on loopback under its own name (and is
 * same-origin with it), so a server on loopback answers only to the loopback names.
 */
import type http from 'node:http';

/**
 * The host names of a server listening on loopback: `localhost`, `127.0.0.1` (with all of 127.0.0.0/8) and `::1`.
 */
export const LOOPBACK_HOSTS: readonly string[] = Object.freeze(['localhost', '127.0.0.1', '::1']);

/** `localhost`, `::1` and 127.0.0.0/8: reachable from this machine only. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127(\.\d{1,3}){3}$/.test(host);
}

/**
 * Whether a request's `Host` names one of `allowed` (any, without a list). 127.0.0.0/8 counts as `127.0.0.1`.
 * A missing or unparsable `Host` is refused when there is a list.
 */
export function hostRule(allowed: readonly string[] | undefined): (req: http.IncomingMessage) => boolean {
  if (allowed === undefined) return () => true;
  const names = new Set(
    allowed.map((h) =>
      h
        .trim()
        .toLowerCase()
        .replace(/^\[(.*)\]$/, '$1'),
    ),
  );
  return (req) => {
    const host = req.headers.host;
    if (host === undefined || host === '') return false;
    let name: string;
    try {
      name = new URL(`http://${host}`).hostname.replace(/^\[(.*)\]$/, '$1');
    } catch {
      return false;
    }
    if (names.has(name)) return true;
    return names.has('127.0.0.1') && /^127(\.\d{1,3}){3}$/.test(name);
  };
}
