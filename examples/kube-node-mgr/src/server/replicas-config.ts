import { parseArgs } from 'node:util';
import {
  allowedHostsFlag,
  assertDemoUsersStayLocal,
  databaseUrlFlag,
  intFlag,
  MAX_TIMER_MS,
  readDemo,
  readKube,
  SERVER_OPTIONS,
  trustProxyFlag,
  USAGE,
} from './config.js';
import type { DemoClusterOptions } from './demo-cluster.js';

/** What `npm run serve:replicas` runs, from flags and environment variables (flags win). */
export interface ReplicasConfig {
  replicas: number;
  /** The proxy's port (0: any) and address. */
  port: number;
  host: string;
  /** The shared demo cluster, or `undefined` when the flags point at a real Kubernetes. */
  demo: { port: number; clusters: number; options: DemoClusterOptions } | undefined;
  /** Flags pointing every replica at a real Kubernetes (empty with the demo cluster). */
  kubeArgs: string[];
  /** The other server flags, passed to every replica as given. */
  serverArgs: string[];
  /**
   * Whether a proxy in front of the launcher's is trusted (`--trust-proxy`): the launcher's proxy then keeps
   * its X-Forwarded-* headers, and the replicas trust two hops instead of one.
   */
  trustProxy: boolean;
  namePrefix: string;
  /** Postgres for every replica (`undefined`: start an embedded one). Passed to them in the environment. */
  databaseUrl: string | undefined;
}

/** The most replicas the launcher starts (each is a Node process with its own pool). */
export const MAX_REPLICAS = 16;

/** The usage text of `serve:replicas --help`. */
export const REPLICAS_USAGE = `Usage: node dist/replicas.mjs [options]

Starts N replicas of the server sharing one Postgres (embedded unless DATABASE_URL or --database-url is
given) and one demo cluster, behind a round-robin proxy without affinity. The proxy binds --port first.

  --replicas N             how many server processes (REPLICAS, default 3, at most ${MAX_REPLICAS})
  --port, --host           the proxy's port and address (PORT, HOST; default 3000 on 127.0.0.1, 0 = any)
  --demo-*                 the shared demo cluster (as below)
  --database-url URL       reaches the replicas in their environment, not on their command line
  --name PREFIX            replica names PREFIX-1, PREFIX-2, … (default replica)
  every other flag of the server is passed to each replica:

${USAGE.replace(/^Usage:.*\n\n/, '')}`;

/** Flags of the server that the launcher passes on to each replica unchanged. */
const PASSED_ON = [
  'data-dir',
  'users-file',
  'concurrency',
  'kube-timeout-ms',
  'lease-ttl-ms',
  'static-dir',
  'allowed-origins',
  'allowed-hosts',
] as const;

/** Reads the launcher's configuration; throws with a clear message on unknown flags or bad values. */
export function loadReplicasConfig(argv: string[], env: NodeJS.ProcessEnv): ReplicasConfig | 'help' {
  const { values } = parseArgs({
    args: argv,
    options: { ...SERVER_OPTIONS, replicas: { type: 'string' } },
    strict: true,
  });
  if (values.help) return 'help';
  const kube = readKube(values, env);
  let demo: ReplicasConfig['demo'];
  let kubeArgs: string[] = [];
  if (kube.type === 'demo') {
    const { port, clusters, ...options } = readDemo(values, env);
    demo = { port, clusters, options };
  } else if (kube.type === 'server') kubeArgs = ['--kube-server', kube.url];
  else if (kube.type === 'servers')
    kubeArgs = ['--kube-server', kube.servers.map((s) => `${s.name}=${s.url}`).join(',')];
  else if (kube.type === 'kubeconfig')
    kubeArgs = [
      ...(kube.path === undefined ? [] : ['--kubeconfig', kube.path]),
      ...(kube.context === undefined ? [] : ['--context', kube.context]),
    ];
  else kubeArgs = ['--in-cluster'];
  const serverArgs: string[] = [];
  for (const flag of PASSED_ON) {
    const value = values[flag];
    if (typeof value === 'string') serverArgs.push(`--${flag}`, value);
  }
  // Checked here so a typo fails once, clearly, instead of in every replica.
  intFlag('--concurrency', values.concurrency, 4, 1, 1000);
  intFlag('--kube-timeout-ms', values['kube-timeout-ms'], 1, 1, MAX_TIMER_MS);
  intFlag('--lease-ttl-ms', values['lease-ttl-ms'], 15_000, 300, 86_400_000);
  allowedHostsFlag(values['allowed-hosts'], '127.0.0.1');
  // The replicas' hops are the launcher's to set: its own proxy is always one of them.
  if (values['trust-proxy-hops'] !== undefined)
    throw new Error('--trust-proxy-hops: the launcher sets it for its replicas; give --trust-proxy instead');
  const replicas = intFlag('--replicas (REPLICAS)', values.replicas ?? env.REPLICAS, 3, 1);
  if (replicas > MAX_REPLICAS)
    throw new Error(`--replicas must be at most ${MAX_REPLICAS} (got ${replicas})`);
  const host = values.host ?? env.HOST ?? '127.0.0.1';
  // The replicas listen on loopback behind the launcher's proxy: the launcher's own address is what counts.
  assertDemoUsersStayLocal(kube, host, values['users-file'] ?? (env.USERS_FILE || undefined));
  return {
    replicas,
    port: intFlag('--port (PORT)', values.port ?? env.PORT, 3000, 0, 65_535),
    host,
    demo,
    kubeArgs,
    serverArgs,
    trustProxy: trustProxyFlag(values['trust-proxy'], env),
    namePrefix: values.name ?? 'replica',
    databaseUrl: databaseUrlFlag(values['database-url'] ?? env.DATABASE_URL),
  };
}
