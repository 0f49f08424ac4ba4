/**
 * Connections not authenticated yet, capped per remote address (the oldest goes first).
 *
 * @module
 */
import { isIPv6 } from 'node:net';
import type { Duplex } from 'node:stream';

/** A socket as the tracker needs it: its peer address (a `net.Socket` has one) and a way to end it. */
type TrackedSocket = Duplex & { remoteAddress?: string | undefined };

/**
 * Connections that have not authenticated yet (TCP accepted but no request, an upgrade being checked, a
 * WebSocket waiting for its `auth` frame), grouped by remote address ({@link addressGroup}: an IPv6
 * client by its /64). When an address goes over its
 * cap, its **oldest** pending connection is destroyed: a client that opens sockets and stays silent
 * (slowloris) can then hold at most `maxPerAddress` descriptors, and a new client, even from the same
 * address, still gets in instead of being refused by a full table. All addresses together are capped
 * the same way at `maxTotal` (the oldest pending connection of any address goes): capped per address
 * only, many addresses (a botnet, or one client with many /64s) could hold any number of them.
 */
export class PendingConnections {
  readonly #maxPerAddress: number;
  readonly #maxTotal: number;
  readonly #onEvict: (address: string, cap: 'address' | 'total') => void;
  /** Per address, in arrival order (a `Set` iterates in insertion order): the first is the oldest. */
  readonly #byAddress = new Map<string, Set<TrackedSocket>>();
  /** Every address's, in arrival order. */
  readonly #all = new Set<TrackedSocket>();
  readonly #addressOf = new WeakMap<TrackedSocket, string>();
  /**
   * Sockets whose 'close' releases them already: a kept-alive connection is tracked again for each request
   * with a body, and a listener per request piled up on it.
   */
  readonly #listening = new WeakSet<TrackedSocket>();
  /** Sockets an HTTP request of which authenticated: not counted while idle (see {@link idle}). */
  readonly #trusted = new WeakSet<TrackedSocket>();

  constructor(options: {
    maxPerAddress: number;
    maxTotal: number;
    onEvict: (address: string, cap: 'address' | 'total') => void;
  }) {
    this.#maxPerAddress = options.maxPerAddress;
    this.#maxTotal = options.maxTotal;
    this.#onEvict = options.onEvict;
  }

  /** Number of pending connections, all addresses together. */
  get size(): number {
    return this.#all.size;
  }

  /** Whether `socket` is tracked (counts as not authenticated yet). */
  has(socket: TrackedSocket): boolean {
    return this.#addressOf.has(socket);
  }

  /** Starts tracking `socket` (idempotent); it stops being tracked when released or closed. */
  add(socket: TrackedSocket): void {
    if (this.#addressOf.has(socket) || socket.destroyed) return;
    const address = addressGroup(socket.remoteAddress ?? 'unknown');
    let sockets = this.#byAddress.get(address);
    if (sockets === undefined) {
      sockets = new Set();
      this.#byAddress.set(address, sockets);
    }
    sockets.add(socket);
    this.#all.add(socket);
    this.#addressOf.set(socket, address);
    if (!this.#listening.has(socket)) {
      this.#listening.add(socket);
      socket.once('close', () => this.release(socket));
    }
    while (sockets.size > this.#maxPerAddress) {
      this.#evict(sockets.values().next().value as TrackedSocket, 'address');
    }
    while (this.#all.size > this.#maxTotal) {
      this.#evict(this.#all.values().next().value as TrackedSocket, 'total');
    }
  }

  #evict(oldest: TrackedSocket, cap: 'address' | 'total'): void {
    const address = this.#addressOf.get(oldest) ?? 'unknown';
    this.release(oldest);
    this.#onEvict(address, cap);
    oldest.destroy();
  }

  /**
   * An HTTP request of `socket` authenticated: it no longer counts, nor does it count again while idle
   * between requests (see {@link idle}), until a later request of it does not authenticate (see
   * {@link requested}).
   */
  authenticated(socket: TrackedSocket): void {
    this.#trusted.add(socket);
    this.release(socket);
  }

  /**
   * A new HTTP request of `socket`: whether it authenticates ({@link authenticated}) decides anew whether
   * the connection counts while idle. Trusted for good, a connection one request of which authenticated
   * was never counted again: a client with one valid credential spent one request on each connection,
   * then kept any number of them, and their descriptors, open past the cap with a liveness probe now and
   * then (which needs no credentials and costs no rate-limit token), as the hole {@link idle} closed.
   */
  requested(socket: TrackedSocket): void {
    this.#trusted.delete(socket);
  }

  /**
   * `socket`, kept alive, carries no request now: it counts again, as a silent connection does, unless a
   * request of it authenticated. Uncounted, a client holding kept-alive connections open with a request
   * now and then that needs no credentials (`GET …/livez`, a 401, a 404) kept any number of them, and
   * their descriptors, past the cap: only a silent connection was ever capped.
   */
  idle(socket: TrackedSocket): void {
    if (!this.#trusted.has(socket)) this.add(socket);
  }

  /** The socket authenticated (or sent an ordinary HTTP request): it no longer counts. */
  release(socket: TrackedSocket): void {
    const address = this.#addressOf.get(socket);
    if (address === undefined) return;
    this.#addressOf.delete(socket);
    this.#all.delete(socket);
    const sockets = this.#byAddress.get(address);
    if (sockets === undefined) return;
    sockets.delete(socket);
    if (sockets.size === 0) this.#byAddress.delete(address);
  }
}

/**
 * What counts as one client address for the server's per-address limits (silent connections, failed
 * authentications), exported for an application's own: an IPv4 address (an IPv4-mapped IPv6 one as its
 * IPv4 address), or the /64 prefix of an IPv6 address (`2001:db8:0:7::/64`). A client is given a whole /64
 * and may send from any of its 2^64 addresses: counted per address, its silent connections were never
 * capped.
 *
 * @example
 * ```ts
 * addressGroup('2001:db8:0:7:1:2:3:4'); // '2001:db8:0:7::/64'
 * addressGroup('::ffff:10.0.0.1'); // '10.0.0.1'
 * addressGroup('::ffff:a00:1'); // '10.0.0.1' (the same address, in hex)
 * ```
 */
export function addressGroup(address: string): string {
  const bare = address.split('%')[0] ?? address;
  if (!isIPv6(bare)) return address;
  const [head = '', tail] = bare.split('::');
  // Each group as a number; an embedded IPv4 address (`::ffff:10.0.0.1`, `64:ff9b::…`) is two groups.
  const groups = (part: string | undefined): number[] =>
    part === undefined || part === ''
      ? []
      : part.split(':').flatMap((group) => {
          if (!group.includes('.')) return [Number.parseInt(group, 16)];
          const [a = 0, b = 0, c = 0, d = 0] = group.split('.').map(Number);
          return [a * 256 + b, c * 256 + d];
        });
  const before = groups(head);
  const after = groups(tail);
  const full =
    tail === undefined
      ? before
      : [...before, ...Array<number>(8 - before.length - after.length).fill(0), ...after];
  // IPv4-mapped (`::ffff:0:0/96`) in any spelling: the dotted one Node gives a dual-stack socket's peer,
  // and the hex one (`::ffff:a00:1`, as a WHATWG URL writes it) or the expanded one a proxy's header may
  // carry. Only the dotted one was recognised: the others counted as the /64 `0:0:0:0::/64`, one budget
  // shared by every IPv4 client so written (and `::1`), which one of them could spend for all.
  if (full.slice(0, 5).every((group) => group === 0) && full[5] === 0xffff) {
    const [high = 0, low = 0] = full.slice(6);
    return `${high >> 8}.${high & 0xff}.${low >> 8}.${low & 0xff}`;
  }
  return `${full
    .slice(0, 4)
    .map((group) => group.toString(16))
    .join(':')}::/64`;
}
