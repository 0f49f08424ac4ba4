/**
 * The replica launcher's proxy: round robin without affinity (the original app's hard case), with a passive
 * health check so a killed replica is skipped at once.
 */
import http from 'node:http';
import net from 'node:net';

/**
 * A round-robin reverse proxy without affinity: every HTTP request and every WebSocket upgrade goes to
 * the next backend in turn, so a page's requests and its socket land on different replicas — the
 * original app's hard case. The `Host` header is passed through unchanged (the Origin check compares them);
 * `X-Forwarded-For` and `X-Forwarded-Proto` are set (see {@link ProxyOptions.trustForwarded}).
 */
/** One routing decision of {@link RoundRobinProxy}, as reported to {@link ProxyOptions.onRoute}. */
export interface ProxyRoute {
  kind: 'http' | 'upgrade';
  method: string;
  path: string;
  backend: string;
}

/** Options of {@link RoundRobinProxy}. */
export interface ProxyOptions {
  /** Told of every request and upgrade and the backend that took it (tests find the replica holding a socket). */
  onRoute?: (route: ProxyRoute) => void;
  /**
   * Picks the backend of one request instead of the rotation (tests pin a batch to a replica); `undefined`
   * keeps the rotation.
   */
  choose?: (route: Omit<ProxyRoute, 'backend'>, backends: readonly string[]) => string | undefined;
  /**
   * Whether a proxy in front of this one is trusted (the launcher's `--trust-proxy`): its `X-Forwarded-For`
   * is kept and this proxy's peer appended, its `X-Forwarded-Proto` kept. Untrusted, both are replaced by
   * what this proxy saw (the peer's address, `http`), so a client cannot pick them.
   * @default false
   */
  trustForwarded?: boolean;
  /**
   * Sent to the backends in {@link PROXY_AUTH_HEADER} (a client's own is dropped): backends given the same
   * `proxySecret` believe the `X-Forwarded-*` headers only of requests carrying it, not of a client that
   * connects to them directly.
   */
  secret?: string;
}

/** The header in which {@link RoundRobinProxy} proves itself to its backends (see `AppOptions.proxySecret`). */
export const PROXY_AUTH_HEADER = 'x-knm-proxy-auth';

/**
 * The `X-Forwarded-For` and `X-Forwarded-Proto` a backend gets: the replicas trust this proxy's (one hop
 * more than the front's, `--trust-proxy-hops`), and take the client's address for the login throttle from
 * it; without it every login shared the proxy's address, one client's failures locking out everyone.
 */
function forwarded(req: http.IncomingMessage, trustFront: boolean): { for: string; proto: string } {
  const peer = req.socket.remoteAddress ?? 'unknown';
  const join = (value: string | string[] | undefined) => (Array.isArray(value) ? value.join(', ') : value);
  const incomingFor = trustFront ? join(req.headers['x-forwarded-for']) : undefined;
  const incomingProto = trustFront ? join(req.headers['x-forwarded-proto']) : undefined;
  return {
    for: incomingFor ? `${incomingFor}, ${peer}` : peer,
    proto: incomingProto || 'http',
  };
}

/**
 * How long a backend that refused a connection is skipped by the rotation (a passive health check, as
 * nginx's `max_fails` / `fail_timeout`): a replica killed with -9 refuses at once, and without this every
 * third request and socket would get a 502 until it is restarted or removed.
 */
const DOWN_MS = 3000;

export class RoundRobinProxy {
  #backends: string[];
  readonly #server: http.Server;
  readonly #sockets = new Set<net.Socket>();
  readonly #options: ProxyOptions;
  /** Backend → when it last refused a connection. */
  readonly #refusedAt = new Map<string, number>();
  #next = 0;

  /** `backends` may be empty at first (see {@link RoundRobinProxy.setBackends}): requests then get a 503. */
  constructor(backends: string[] = [], options: ProxyOptions = {}) {
    this.#backends = backends;
    this.#options = options;
    this.#server = http.createServer((req, res) => {
      const backend = this.#pick('http', req);
      if (backend === undefined) {
        res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '1' });
        res.end(JSON.stringify({ error: { code: 'starting', message: 'the replicas are starting' } }));
        return;
      }
      // Until a backend accepts the connection nothing of the request was sent, so a refusal is retried on
      // the next backend (the body waits, paused, in `req`).
      this.#connect(backend, req, 'http', (connection) => {
        if (connection === undefined) {
          res.writeHead(502, { 'content-type': 'text/plain' });
          res.end('bad gateway');
          return;
        }
        // Gone while the backend was being reached: nothing to send it.
        if (res.destroyed) {
          connection.destroy();
          return;
        }
        const fwd = forwarded(req, this.#options.trustForwarded === true);
        const headers: http.OutgoingHttpHeaders = {
          ...req.headers,
          'x-forwarded-for': fwd.for,
          'x-forwarded-proto': fwd.proto,
        };
        delete headers[PROXY_AUTH_HEADER];
        if (this.#options.secret !== undefined) headers[PROXY_AUTH_HEADER] = this.#options.secret;
        const upstream = http.request(
          { method: req.method, path: req.url, headers, createConnection: () => connection },
          (response) => {
            res.writeHead(response.statusCode ?? 502, response.rawHeaders);
            response.pipe(res);
          },
        );
        upstream.on('error', () => {
          // Deliberately plain text, as many real proxies answer: the page must cope with bodies that are
          // not JSON.
          if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
          res.end('bad gateway');
        });
        // The client gone before its answer ended (a page reloaded or closed during an event stream or a long
        // read): the replica's request goes too. Left open, the replica never saw its caller leave: an event
        // stream ran on until its task ended, and reads given up when their callers go (the unrecorded nodes')
        // read on.
        res.on('close', () => {
          if (!res.writableFinished) upstream.destroy();
        });
        req.pipe(upstream);
      });
    });
    this.#server.on('upgrade', (req, socket, head) => {
      const backend = this.#pick('upgrade', req);
      if (backend === undefined) {
        socket.end('HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
        return;
      }
      this.#track(socket as net.Socket);
      socket.on('error', () => {});
      this.#connect(backend, req, 'upgrade', (upstream) => {
        if (upstream === undefined || socket.destroyed) {
          upstream?.destroy();
          socket.end('HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
          return;
        }
        const fwd = forwarded(req, this.#options.trustForwarded === true);
        const lines = [`${req.method} ${req.url} HTTP/1.1`];
        for (let i = 0; i < req.rawHeaders.length; i += 2) {
          const name = req.rawHeaders[i]?.toLowerCase();
          if (name === 'x-forwarded-for' || name === 'x-forwarded-proto' || name === PROXY_AUTH_HEADER)
            continue;
          lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
        }
        lines.push(`X-Forwarded-For: ${fwd.for}`, `X-Forwarded-Proto: ${fwd.proto}`);
        if (this.#options.secret !== undefined) lines.push(`X-Knm-Proxy-Auth: ${this.#options.secret}`);
        upstream.write(`${lines.join('\r\n')}\r\n\r\n`);
        if (head.length > 0) upstream.write(head);
        upstream.pipe(socket);
        socket.pipe(upstream);
        upstream.on('error', () => socket.destroy());
        socket.on('error', () => upstream.destroy());
        upstream.on('close', () => socket.destroy());
        socket.on('close', () => upstream.destroy());
      });
    });
  }

  /**
   * Opens a TCP connection to `first`, or, if it refuses, to the next backends in turn (each at most once);
   * calls `done` with the connected socket, or with `undefined` when every backend refused.
   */
  #connect(
    first: string,
    req: http.IncomingMessage,
    kind: ProxyRoute['kind'],
    done: (socket: net.Socket | undefined) => void,
  ): void {
    const tried = new Set<string>();
    const attempt = (backend: string) => {
      tried.add(backend);
      const target = new URL(backend);
      const socket = net.connect(Number(target.port), target.hostname);
      const refused = () => {
        socket.destroy();
        this.#refusedAt.set(backend, Date.now());
        const next = this.#rotation().find((b) => !tried.has(b));
        if (next === undefined) done(undefined);
        else attempt(next);
      };
      socket.once('error', refused);
      socket.once('connect', () => {
        socket.off('error', refused);
        this.#refusedAt.delete(backend);
        this.#track(socket);
        this.#options.onRoute?.({ kind, method: req.method ?? 'GET', path: req.url ?? '/', backend });
        done(socket);
      });
    };
    attempt(first);
  }

  /** The backends in rotation order from the next one, those that refused lately last. */
  #rotation(): string[] {
    const n = this.#backends.length;
    const order = Array.from({ length: n }, (_, i) => this.#backends[(this.#next + i) % n] as string);
    const now = Date.now();
    const down = (b: string) => now - (this.#refusedAt.get(b) ?? -Infinity) < DOWN_MS;
    return [...order.filter((b) => !down(b)), ...order.filter(down)];
  }

  #track(socket: net.Socket): void {
    this.#sockets.add(socket);
    socket.on('close', () => this.#sockets.delete(socket));
  }

  /** Replaces the backends (the launcher binds the proxy first and adds the replicas once they listen). */
  setBackends(backends: string[]): void {
    this.#backends = [...backends];
  }

  #pick(kind: ProxyRoute['kind'], req: http.IncomingMessage): string | undefined {
    if (this.#backends.length === 0) return undefined;
    const request = { kind, method: req.method ?? 'GET', path: req.url ?? '/' };
    let backend = this.#options.choose?.(request, this.#backends);
    if (backend === undefined) {
      backend = this.#rotation()[0];
      this.#next++;
    }
    return backend;
  }

  /** Listens; resolves with the proxy's URL. */
  listen(port: number, host = '127.0.0.1'): Promise<string> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      // Every browser of a failed replica comes back through here at once: queue them (see main.ts).
      this.#server.listen({ port, host, backlog: 4096 }, () => {
        const address = this.#server.address() as net.AddressInfo;
        resolve(`http://${host === '0.0.0.0' ? 'localhost' : host}:${address.port}`);
      });
    });
  }

  /** Closes the listener and every proxied connection. */
  async close(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
