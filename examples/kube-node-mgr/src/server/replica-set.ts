import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { startEmbeddedPostgres as startRepoEmbeddedPostgres } from '../../../../scripts/embedded-postgres.mjs';
import type { DemoCluster, DemoClusterOptions } from './demo-cluster.js';
import { type DemoClusters, startDemoClusters } from './demo-clusters.js';

/** A running embedded Postgres. */
export interface EmbeddedPg {
  url: string;
  stop(): Promise<void>;
}

/** A free TCP port on 127.0.0.1 (closed again before it is returned). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts a throw-away Postgres (embedded-postgres, a dev dependency): the repository's helper, which also
 * works as root from a private checkout, or fails at once saying what to do.
 */
export async function startEmbeddedPostgres(): Promise<EmbeddedPg> {
  return startRepoEmbeddedPostgres({ name: 'kube-node-mgr-pg' });
}

/**
 * A round-robin reverse proxy without affinity: every HTTP request and every WebSocket upgrade goes to
 * the next backend in turn, so a page's requests and its socket land on different replicas — the
 * original app's hard case. The `Host` header is passed through unchanged (the Origin check compares them).
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
        const upstream = http.request(
          { method: req.method, path: req.url, headers: req.headers, createConnection: () => connection },
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
        const lines = [`${req.method} ${req.url} HTTP/1.1`];
        for (let i = 0; i < req.rawHeaders.length; i += 2)
          lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
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
      this.#server.listen(port, host, () => {
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

/** A server child process started by {@link spawnServer}. */
export interface ServerProcess {
  url: string;
  child: ChildProcess;
  /** Everything it printed so far. */
  output(): string;
  stop(): Promise<void>;
}

/**
 * Runs `node <script> …args` and resolves once it prints its `listening on` line. `onOutput` receives
 * each chunk of its stdout/stderr (the launcher prints them; tests keep them for failure reports).
 */
export function spawnServer(options: {
  script: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  onOutput?: (text: string) => void;
  startTimeoutMs?: number;
}): Promise<ServerProcess> {
  const child = spawn(process.execPath, [options.script, ...options.args], {
    env: { ...process.env, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let text = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`server did not start in time:\n${text}`));
    }, options.startTimeoutMs ?? 30_000);
    const onData = (chunk: Buffer) => {
      const s = chunk.toString('utf8');
      text += s;
      options.onOutput?.(s);
      const match = text.match(/listening on (http:\/\/\S+)/);
      if (match?.[1] !== undefined && timer.hasRef()) {
        clearTimeout(timer);
        timer.unref();
        resolve({
          url: match[1],
          child,
          output: () => text,
          stop: () =>
            new Promise<void>((done) => {
              if (child.exitCode !== null || child.signalCode !== null) return done();
              const kill = setTimeout(() => child.kill('SIGKILL'), 8000);
              child.once('exit', () => {
                clearTimeout(kill);
                done();
              });
              child.kill('SIGTERM');
            }),
        });
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}:\n${text}`));
    });
  });
}

/** Options of {@link startReplicaSet}. */
export interface ReplicaSetOptions {
  /** The bundled server (`dist/server.mjs`). */
  serverScript: string;
  /** @default 3 */
  replicas?: number;
  /** Port of the proxy (0: any). It is bound before anything else starts. @default 3000 */
  port?: number;
  /** Address of the proxy. @default '127.0.0.1' */
  host?: string;
  /** Port of the shared demo cluster (0: any). @default 8001, falling back to any */
  demoPort?: number;
  /** Options of the shared demo cluster. */
  demo?: DemoClusterOptions;
  /** How many demo clusters (contexts `demo`, `demo-east`); every replica manages each. @default 2 */
  demoClusters?: number;
  /**
   * Flags that point every replica at a real Kubernetes (e.g. `['--kubeconfig', file]`) instead of a shared
   * demo cluster; when given, no demo cluster is started.
   */
  kubeArgs?: string[];
  /** Extra flags for every replica (e.g. `--concurrency 1`). */
  serverArgs?: string[];
  /** Replica names are `<namePrefix>-1`, `-2`, …. @default 'replica' */
  namePrefix?: string;
  /** Use this Postgres instead of starting an embedded one. */
  databaseUrl?: string;
  onOutput?: (text: string) => void;
  /** Hooks of the proxy (tests). */
  proxy?: ProxyOptions;
}

/** A running replica set: Postgres, one demo cluster, N server processes and the proxy in front. */
export interface ReplicaSet {
  url: string;
  /** The shared demo cluster's URL (undefined with {@link ReplicaSetOptions.kubeArgs}). */
  demoUrl: string | undefined;
  databaseUrl: string;
  replicas: ServerProcess[];
  /** The shared demo cluster (undefined with {@link ReplicaSetOptions.kubeArgs}). */
  cluster: DemoCluster | undefined;
  /** Every demo cluster by context name (empty with {@link ReplicaSetOptions.kubeArgs}). */
  demoClusters: { name: string; url: string; cluster: DemoCluster }[];
  stop(): Promise<void>;
}

/**
 * Starts the original's hard case: N replicas of the server sharing one Postgres (embedded unless given)
 * and one demo cluster, behind a round-robin proxy without affinity. Sessions work across replicas because
 * every replica gets the same `SESSION_SECRET`.
 *
 * The proxy binds its port first: every other port (Postgres, demo cluster fallback, replicas, and the local
 * side of each client connection) is chosen afterwards, so none can take the port asked for. The database
 * URL reaches the replicas through the environment, never their command line (visible to every user in `ps`).
 */
export async function startReplicaSet(options: ReplicaSetOptions): Promise<ReplicaSet> {
  const stops: (() => Promise<void>)[] = [];
  const stopAll = async () => {
    for (const stop of stops.reverse()) await stop().catch(() => {});
  };
  try {
    const proxy = new RoundRobinProxy([], options.proxy);
    const url = await proxy.listen(options.port ?? 3000, options.host);
    stops.push(() => proxy.close());
    let databaseUrl = options.databaseUrl;
    if (databaseUrl === undefined) {
      const pg = await startEmbeddedPostgres();
      stops.push(pg.stop);
      databaseUrl = pg.url;
    }
    let demoClusters: DemoClusters['clusters'] = [];
    let kubeArgs = options.kubeArgs;
    if (kubeArgs === undefined) {
      const demos = await startDemoClusters(
        options.demoClusters ?? 2,
        options.demoPort ?? 8001,
        options.demo,
      );
      stops.push(() => demos.close());
      demoClusters = demos.clusters;
      kubeArgs = ['--kube-server', demoClusters.map((c) => `${c.name}=${c.url}`).join(',')];
    }
    const cluster = demoClusters[0]?.cluster;
    const demoUrl = demoClusters[0]?.url;
    const secret = randomBytes(32).toString('base64url');
    const replicas: ServerProcess[] = [];
    const count = options.replicas ?? 3;
    // One at a time: the first applies the schema migration (the others would wait on its lock anyway).
    for (let i = 0; i < count; i++) {
      const replica = await spawnServer({
        script: options.serverScript,
        args: [
          // Internal: on loopback whatever HOST says (only the proxy faces the network), on a system-chosen port.
          '--host',
          '127.0.0.1',
          '--port',
          '0',
          ...kubeArgs,
          '--name',
          `${options.namePrefix ?? 'replica'}-${i + 1}`,
          ...(options.serverArgs ?? []),
        ],
        // The URL holds the password: in the environment, not on the command line every user sees in `ps`.
        env: { SESSION_SECRET: secret, DATABASE_URL: databaseUrl },
        ...(options.onOutput === undefined ? {} : { onOutput: options.onOutput }),
      });
      replicas.push(replica);
      stops.push(replica.stop);
    }
    proxy.setBackends(replicas.map((r) => r.url));
    return { url, demoUrl, databaseUrl, replicas, cluster, demoClusters, stop: stopAll };
  } catch (error) {
    await stopAll();
    throw error;
  }
}
