/**
 * Ends a `pg` client within a deadline. pg's `end()` sends Terminate, half-closes the socket, and
 * resolves only when the socket closes, which takes the server's answer (its FIN). When the network
 * drops every packet (a firewall, a dead host, a severed link) no answer comes, and the socket lives
 * until TCP gives up on it: about 15 minutes on Linux, during which `close()` of the store, and with it
 * a server's graceful shutdown, would wait. Past the deadline the socket is destroyed instead.
 *
 * @module
 */

/**
 * How long {@link endWithin} waits, by default, for `client.end()` before destroying the socket. A live
 * server closes an idle connection about one round trip after Terminate (milliseconds, even across
 * regions), so a second is ample; one that has not answered by then is not going to soon, and the store
 * is done with the connection either way. Destroyed, it is only ended without the server's goodbye: the
 * Terminate was already sent, and a server that never got it sees the connection drop (its backend
 * exits; a `LISTEN` session holds nothing that outlives it).
 */
export const END_TIMEOUT_MS = 1000;

/**
 * The part of a client {@link endWithin} needs. `connection.stream` is pg's socket to the server (a
 * `net.Socket`, or the `tls.TLSSocket` over it): declared by `@types/pg` (`ClientBase.connection`,
 * `Connection.stream`) though not in pg's documentation, and the only way to reach the socket of a client
 * the store did not create (`listenClient` may be a factory). Optional: a client without it (not a
 * `pg.Client`) is merely no longer waited for after the deadline.
 */
export interface EndableClient {
  end(): Promise<unknown>;
  readonly connection?: { readonly stream?: { destroy(): unknown } | undefined } | undefined;
}

/**
 * `client.end()`, raced against `timeoutMs`: if it has not resolved by then, the client's socket is
 * destroyed, and `end()` given as long again to settle (pg's does at once: it resolves on the socket's
 * close); a client whose `end()` is not tied to that socket is then no longer waited for. Neither a socket
 * destroyed here nor a timer outlives the returned promise. Never rejects (ending a broken connection may
 * fail; it is gone either way).
 */
export async function endWithin(client: EndableClient, timeoutMs = END_TIMEOUT_MS): Promise<void> {
  // Asked in a microtask: a client whose `end` throws or answers no promise (a `listenClient` factory's
  // object of the wrong kind) must not reject this, which callers fire and forget.
  const ended = Promise.resolve()
    .then(() => client.end())
    .then(
      () => true,
      () => true,
    );
  if (await settlesWithin(ended, timeoutMs)) return;
  const stream = client.connection?.stream;
  if (stream === undefined) return;
  stream.destroy();
  await settlesWithin(ended, timeoutMs);
}

/**
 * Whether `settled` settles (resolves or rejects) within `timeoutMs`; the timer is cleared either way.
 * Never rejects.
 */
export async function settlesWithin(pending: Promise<unknown>, timeoutMs: number): Promise<boolean> {
  const settled = pending.then(
    () => true,
    () => true,
  );
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
    // Never what keeps a process alive: the socket it guards does that until it is closed.
    timer.unref?.();
  });
  try {
    return await Promise.race([settled, late]);
  } finally {
    clearTimeout(timer);
  }
}
