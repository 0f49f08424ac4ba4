import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { startEmbeddedPostgres as startRepoEmbeddedPostgres } from '../../../../scripts/embedded-postgres.mjs';
import type { DemoCluster, DemoClusterOptions } from './demo-cluster.js';
import { isLoopback } from './host-rule.js';
import { type ProxyOptions, RoundRobinProxy } from './round-robin-proxy.js';

export { type ProxyOptions, type ProxyRoute, RoundRobinProxy } from './round-robin-proxy.js';

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
  /**
   * A proxy in front of the launcher's is trusted (`--trust-proxy`): the round-robin proxy keeps its
   * X-Forwarded-* headers, and the replicas trust two hops. Otherwise they trust one, the round-robin
   * proxy, which sets the headers itself (see `ProxyOptions.trustForwarded`).
   * @default false
   */
  trustProxy?: boolean;
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
    // The replicas believe the X-Forwarded-* headers only of requests carrying this proxy's secret: they
    // listen on loopback, where a local client could connect to one directly and name its own address.
    const proxySecret = randomBytes(32).toString('base64url');
    const proxy = new RoundRobinProxy([], {
      ...options.proxy,
      trustForwarded: options.trustProxy === true,
      secret: proxySecret,
    });
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
          '--trust-proxy-hops',
          options.trustProxy === true ? '2' : '1',
          ...(options.serverArgs ?? []),
        ],
        // The URL holds the password: in the environment, not on the command line every user sees in `ps`.
        env: {
          SESSION_SECRET: secret,
          DATABASE_URL: databaseUrl,
          PROXY_SECRET: proxySecret,
          // The replicas listen on loopback, but are reached by the proxy's host name, which they check (the
          // proxy passes Host through): any, as for a server listening there, unless ALLOWED_HOSTS says.
          ...(process.env.ALLOWED_HOSTS === undefined && !isLoopback(options.host ?? '127.0.0.1')
            ? { ALLOWED_HOSTS: '*' }
            : {}),
        },
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
