import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { isIPv6 } from 'node:net';
import path from 'node:path';
import { type ParseArgsConfig, parseArgs } from 'node:util';
import { isLoopback, LOOPBACK_HOSTS } from './host-rule.js';
import { KUBE_NODES_DEFAULTS, type KubeSource } from './kube-nodes.js';

/** Everything `main` needs, from flags and environment variables (flags win). */
export interface Config {
  host: string;
  port: number;
  /** Where Kubernetes is; `demo` starts the built-in demo cluster. */
  kube: KubeSource | { type: 'demo' };
  demo: {
    port: number;
    /** How many demo clusters (contexts `demo`, `demo-east`). */
    clusters: number;
    latencyMs: number;
    failureRate: number;
    seed: number;
    failNodes: string[];
  };
  dataDir: string;
  databaseUrl: string | undefined;
  usersFile: string | undefined;
  sessionSecret: string;
  concurrency: number;
  /** How long one Kubernetes API request may take before it fails (and is retried where that is safe). */
  kubeTimeoutMs: number;
  /** Lease of a running task: how long after its replica died another one reports it interrupted. */
  leaseTtlMs: number;
  staticDir: string;
  /** Proxies in front whose X-Forwarded-* headers are believed (0: none; `--trust-proxy` is 1). */
  trustProxy: number;
  /** The secret a trusted proxy sends in `X-Knm-Proxy-Auth`; without it its X-Forwarded-* are dropped. */
  proxySecret: string | undefined;
  allowedOrigins: 'same-origin' | string[];
  /** The host names the `Host` header may name; `undefined`: any (see `AppOptions.allowedHosts`). */
  allowedHosts: string[] | undefined;
  /** A name for this process in logs (replicas). */
  name: string;
}

/** The usage text of `--help`. */
export const USAGE = `Usage: node dist/server.mjs [options]

  --port N                 HTTP port (PORT, default 3000)
  --host H                 listen address (HOST, default 127.0.0.1; 0.0.0.0 in a container)
  --kubeconfig FILE        use this kubeconfig (KUBECONFIG)
  --context NAME           the default kubeconfig context (KUBE_CONTEXT); every context is selectable in the UI
  --in-cluster             use the service account (default when KUBERNETES_SERVICE_HOST is set)
  --kube-server URL        talk to an API server without credentials (KUBE_SERVER; e.g. a shared demo cluster);
                           NAME=URL,NAME=URL: several, each a cluster of that name (the first the default)
  --demo                   force the built-in demo cluster (the default when nothing else is given)
  --demo-port N            demo cluster port (DEMO_PORT, default 8001, 0 = any)
  --demo-clusters N        1 or 2 demo clusters, contexts demo and demo-east (DEMO_CLUSTERS, default 2)
  --demo-latency-ms N      delay of every demo API call (DEMO_LATENCY_MS, default 150)
  --demo-failure-rate X    probability 0..1 that a demo PATCH fails (DEMO_FAILURE_RATE, default 0)
  --demo-seed N            seed of the injected failures (DEMO_SEED, default 1)
  --demo-fail-nodes LIST   comma-separated nodes whose every PATCH fails (DEMO_FAIL_NODES)
  --data-dir DIR           SQLite database and generated secret (DATA_DIR, default ./data)
  --database-url URL       use Postgres (DATABASE_URL)
  --users-file FILE        users JSON (USERS_FILE; default: demo/demo admin, ops/ops operator, viewer/viewer,
                           only with the demo cluster or --kube-server on loopback: required otherwise)
  --concurrency N          nodes patched at once per batch (BATCH_CONCURRENCY, default 4)
  --kube-timeout-ms N      one Kubernetes API request's time limit; a node's reads and patch are retried
                           after it, up to 5 attempts (KUBE_TIMEOUT_MS, default 30000)
  --lease-ttl-ms N         a dead replica's running batches end "interrupted" this long after (LEASE_TTL_MS, default 15000)
  --static-dir DIR         built web UI (STATIC_DIR, default: dist/web beside the server bundle)
  --trust-proxy            trust X-Forwarded-Proto for Secure cookies and Origin checks, and the proxy's
                           X-Forwarded-For entry as the client address (TRUST_PROXY=1)
  --trust-proxy-hops N     the same behind N proxies in a row (TRUST_PROXY_HOPS; the replica launcher
                           gives its replicas 1, or 2 with --trust-proxy)
  --allowed-origins LIST   comma-separated origins (ALLOWED_ORIGINS; default same-origin)
  --allowed-hosts LIST     comma-separated host names the Host header may name, or * for any (ALLOWED_HOSTS;
                           default: localhost, 127.0.0.1 and ::1 when --host is loopback, else any)
  SESSION_SECRET           cookie signing secret (default: generated into DATA_DIR/session-secret)
  PROXY_SECRET             believe X-Forwarded-* only on requests whose X-Knm-Proxy-Auth header is this
                           (at least 16 characters; the replica launcher gives its replicas and its proxy one)
`;

/** The server's flags (`parseArgs` options); the replica launcher accepts the same ones. */
export const SERVER_OPTIONS = {
  help: { type: 'boolean', short: 'h' },
  port: { type: 'string' },
  host: { type: 'string' },
  kubeconfig: { type: 'string' },
  context: { type: 'string' },
  'in-cluster': { type: 'boolean' },
  'kube-server': { type: 'string' },
  demo: { type: 'boolean' },
  'demo-port': { type: 'string' },
  'demo-clusters': { type: 'string' },
  'demo-latency-ms': { type: 'string' },
  'demo-failure-rate': { type: 'string' },
  'demo-seed': { type: 'string' },
  'demo-fail-nodes': { type: 'string' },
  'data-dir': { type: 'string' },
  'database-url': { type: 'string' },
  'users-file': { type: 'string' },
  concurrency: { type: 'string' },
  'kube-timeout-ms': { type: 'string' },
  'lease-ttl-ms': { type: 'string' },
  'static-dir': { type: 'string' },
  'trust-proxy': { type: 'boolean' },
  'trust-proxy-hops': { type: 'string' },
  'allowed-origins': { type: 'string' },
  'allowed-hosts': { type: 'string' },
  name: { type: 'string' },
} as const satisfies NonNullable<ParseArgsConfig['options']>;

/** The parsed values of {@link SERVER_OPTIONS}. */
export type ServerFlags = ReturnType<
  typeof parseArgs<{ options: typeof SERVER_OPTIONS; strict: true }>
>['values'];

/** The longest delay a Node timer takes: a longer one (`setTimeout`, `AbortSignal.timeout`) fires after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * An integer flag or variable from `min` to `max`; `fallback` when unset. Throws a message naming the flag
 * and its variable (`name` is "--port (PORT)"). Without a bound, a port past 65535 failed at listen without
 * naming its variable, and a delay past {@link MAX_TIMER_MS} fired after 1 ms: every Kubernetes request of
 * `KUBE_TIMEOUT_MS=3000000000` timed out at once.
 */
export function intFlag(
  name: string,
  value: string | undefined,
  fallback: number,
  min: number,
  max = Number.MAX_SAFE_INTEGER,
): number {
  if (value === undefined || value === '') return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new Error(
      max === Number.MAX_SAFE_INTEGER
        ? `${name} must be an integer ≥ ${min} (got "${value}")`
        : `${name} must be an integer from ${min} to ${max} (got "${value}")`,
    );
  return n;
}

/** The highest TCP port. */
const MAX_PORT = 65_535;

/**
 * `TRUST_PROXY` (or `--trust-proxy`): `1` / `true` trust one proxy, `0` / `false` / unset none. Anything else
 * (`yes`, `TRUE`, `on`) was taken as "none" without a word: Secure cookies and the proxy's client address
 * silently off behind a TLS proxy the operator meant to trust.
 */
export function trustProxyFlag(flag: boolean | undefined, env: NodeJS.ProcessEnv): boolean {
  if (flag === true) return true;
  const value = env.TRUST_PROXY;
  if (value === undefined || value === '' || value === '0' || value === 'false') return false;
  if (value === '1' || value === 'true') return true;
  throw new Error(`TRUST_PROXY must be 1, true, 0 or false (got "${value}")`);
}

/**
 * `--database-url` / `DATABASE_URL`: a `postgres://` or `postgresql://` URL (`undefined` when unset or empty).
 * Anything else reached pg, which read `notaurl` as a host named "base" ("Migrating schema finishline failed:
 * getaddrinfo ENOTFOUND base"), and a form pg takes but `URL` does not failed after the store was open.
 */
export function databaseUrlFlag(value: string | undefined): string | undefined {
  if (value === undefined || value === '') return undefined;
  let protocol: string | undefined;
  try {
    protocol = new URL(value).protocol;
  } catch {
    protocol = undefined;
  }
  // The URL itself is not shown: it may hold the password.
  if (protocol !== 'postgres:' && protocol !== 'postgresql:')
    throw new Error('--database-url (DATABASE_URL) must be a postgres:// or postgresql:// URL');
  return value;
}

/** A secret from the environment: at least 16 characters when given (`undefined` when unset or empty). */
function secretVariable(name: string, value: string | undefined): string | undefined {
  if (value === undefined || value === '') return undefined;
  if (value.length < 16) throw new Error(`${name} must have at least 16 characters (got ${value.length})`);
  return value;
}

/** The Finishline server's largest `leaseTtlMs`: a day. */
const MAX_LEASE_TTL_MS = 86_400_000;

/** Reads the configuration; throws with a clear message on bad values. */
export function loadConfig(
  argv: string[],
  env: NodeJS.ProcessEnv,
  cwd: string,
  defaultStaticDir: string,
): Config | 'help' {
  const { values } = parseArgs({ args: argv, options: SERVER_OPTIONS, strict: true });
  if (values.help) return 'help';
  const dataDir = path.resolve(cwd, values['data-dir'] ?? env.DATA_DIR ?? 'data');
  const origins = values['allowed-origins'] ?? env.ALLOWED_ORIGINS;
  const kube = readKube(values, env);
  const usersFile = values['users-file'] ?? (env.USERS_FILE || undefined);
  // The demo users (demo / demo, an admin) are for the demo cluster and API servers without credentials. With
  // a cluster's credentials, a deployment that lost its USERS_FILE (or `npm start` in a shell whose KUBECONFIG
  // names a real cluster) served that cluster's nodes to anyone who had read the README.
  if (usersFile === undefined && (kube.type === 'kubeconfig' || kube.type === 'in-cluster')) {
    throw new Error(
      `${kube.type === 'kubeconfig' ? 'a kubeconfig (--kubeconfig / KUBECONFIG)' : 'the in-cluster service account'} needs --users-file (USERS_FILE): the demo users are only for the demo cluster (--demo) and --kube-server`,
    );
  }
  const host = values.host ?? env.HOST ?? '127.0.0.1';
  assertDemoUsersStayLocal(kube, host, usersFile);
  return {
    host,
    port: intFlag('--port (PORT)', values.port ?? env.PORT, 3000, 0, MAX_PORT),
    kube,
    demo: readDemo(values, env),
    dataDir,
    databaseUrl: databaseUrlFlag(values['database-url'] ?? env.DATABASE_URL),
    usersFile,
    sessionSecret: secretVariable('SESSION_SECRET', env.SESSION_SECRET) ?? persistentSecret(dataDir),
    // At most createApp's bound of concurrency.
    concurrency: intFlag(
      '--concurrency (BATCH_CONCURRENCY)',
      values.concurrency ?? env.BATCH_CONCURRENCY,
      4,
      1,
      1000,
    ),
    // Default: KUBE_NODES_DEFAULTS.requestTimeoutMs (kube-nodes.ts).
    kubeTimeoutMs: intFlag(
      '--kube-timeout-ms (KUBE_TIMEOUT_MS)',
      values['kube-timeout-ms'] ?? env.KUBE_TIMEOUT_MS,
      KUBE_NODES_DEFAULTS.requestTimeoutMs,
      1,
      MAX_TIMER_MS,
    ),
    // At most the Finishline server's bound of leaseTtlMs (a day).
    leaseTtlMs: intFlag(
      '--lease-ttl-ms (LEASE_TTL_MS)',
      values['lease-ttl-ms'] ?? env.LEASE_TTL_MS,
      15_000,
      300,
      MAX_LEASE_TTL_MS,
    ),
    staticDir: path.resolve(cwd, values['static-dir'] ?? env.STATIC_DIR ?? defaultStaticDir),
    // At most createApp's bound of trustProxy.
    trustProxy: intFlag(
      '--trust-proxy-hops (TRUST_PROXY_HOPS)',
      values['trust-proxy-hops'] ?? env.TRUST_PROXY_HOPS,
      trustProxyFlag(values['trust-proxy'], env) ? 1 : 0,
      0,
      10,
    ),
    proxySecret: secretVariable('PROXY_SECRET', env.PROXY_SECRET),
    allowedOrigins: origins
      ? origins
          .split(',')
          .map((o) => o.trim())
          .filter(Boolean)
      : 'same-origin',
    allowedHosts: allowedHostsFlag(values['allowed-hosts'] ?? env.ALLOWED_HOSTS, host),
    name: values.name ?? env.REPLICA_NAME ?? 'kube-node-mgr',
  };
}

/**
 * `--allowed-hosts` / `ALLOWED_HOSTS`: `*` any host; a list, those names; unset, the loopback names when the
 * server listens on loopback (reached from this machine only, so by a loopback name — or by a DNS-rebinding
 * page's name, which this refuses: until 7 December 2026 a web page whose name was made to resolve to
 * 127.0.0.1 was same-origin with the server, signed in as `demo` / `demo` and ran batches), else any.
 */
export function allowedHostsFlag(value: string | undefined, host: string): string[] | undefined {
  if (value === undefined || value.trim() === '') return isLoopback(host) ? [...LOOPBACK_HOSTS] : undefined;
  if (value.trim() === '*') return undefined;
  const names = value
    .split(',')
    .map((h) => h.trim())
    .filter(Boolean);
  for (const name of names) {
    if (!isIPv6(name.replace(/^\[(.*)\]$/, '$1')) && !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/i.test(name))
      throw new Error(
        `--allowed-hosts (ALLOWED_HOSTS) must be * or comma-separated host names without a port (got "${name}")`,
      );
  }
  return names;
}

/**
 * An API server without credentials (`--kube-server`) may be a real cluster: `kubectl proxy` listens on
 * 8001 too, with the operator's own rights. Its nodes behind the demo users (`demo` / `demo`, an admin) are
 * the operator's to use on their own machine, not everyone's on the network: listening beyond loopback
 * needs a users file.
 */
export function assertDemoUsersStayLocal(
  kube: Config['kube'],
  host: string,
  usersFile: string | undefined,
): void {
  if (usersFile !== undefined || (kube.type !== 'server' && kube.type !== 'servers') || isLoopback(host))
    return;
  throw new Error(
    `--kube-server with --host ${host} (HOST) needs --users-file (USERS_FILE): the demo users (demo / demo, an admin) are only served on loopback with an API server of your own`,
  );
}

/** Where Kubernetes is, from the kube flags and variables (`demo` when nothing is given). */
export function readKube(values: ServerFlags, env: NodeJS.ProcessEnv): Config['kube'] {
  const kubeconfig = values.kubeconfig ?? env.KUBECONFIG;
  const kubeServer = values['kube-server'] ?? env.KUBE_SERVER;
  const context = values.context ?? env.KUBE_CONTEXT;
  if (values.demo) return { type: 'demo' };
  if (kubeServer) {
    if (kubeServer.includes('=')) return parseServers(kubeServer);
    // Without a scheme (`localhost:8001`) the server started, and every Kubernetes call of it failed.
    if (!/^https?:\/\/[^/]/.test(kubeServer))
      throw new Error(
        `--kube-server (KUBE_SERVER) must be an http(s) URL or NAME=URL,… (got "${kubeServer}")`,
      );
    return { type: 'server', url: kubeServer };
  }
  if (kubeconfig) return { type: 'kubeconfig', path: kubeconfig, context };
  if (values['in-cluster'] || env.KUBERNETES_SERVICE_HOST) return { type: 'in-cluster' };
  return { type: 'demo' };
}

/** `NAME=URL,NAME=URL` → several named API servers. */
function parseServers(text: string): Config['kube'] {
  const servers = text.split(',').map((part) => {
    const at = part.indexOf('=');
    const name = part.slice(0, at).trim();
    const url = part.slice(at + 1).trim();
    if (at < 1 || !/^[\w.:@/-]{1,253}$/.test(name) || !/^https?:\/\//.test(url))
      throw new Error(`--kube-server: "${part}" is not NAME=URL (or give one URL)`);
    return { name, url };
  });
  if (new Set(servers.map((s) => s.name)).size !== servers.length)
    throw new Error('--kube-server: a cluster name is given twice');
  return { type: 'servers', servers };
}

/** The built-in demo cluster's settings, from the `--demo-*` flags and variables. */
export function readDemo(values: ServerFlags, env: NodeJS.ProcessEnv): Config['demo'] {
  const rate = values['demo-failure-rate'] ?? env.DEMO_FAILURE_RATE;
  const failureRate = rate === undefined || rate === '' ? 0 : Number(rate);
  if (!(failureRate >= 0 && failureRate <= 1))
    throw new Error(`--demo-failure-rate (DEMO_FAILURE_RATE) must be between 0 and 1 (got "${rate}")`);
  return {
    port: intFlag('--demo-port (DEMO_PORT)', values['demo-port'] ?? env.DEMO_PORT, 8001, 0, MAX_PORT),
    clusters: demoClusters(values['demo-clusters'] ?? env.DEMO_CLUSTERS),
    latencyMs: intFlag(
      '--demo-latency-ms (DEMO_LATENCY_MS)',
      values['demo-latency-ms'] ?? env.DEMO_LATENCY_MS,
      150,
      0,
      MAX_TIMER_MS,
    ),
    failureRate,
    seed: intFlag('--demo-seed (DEMO_SEED)', values['demo-seed'] ?? env.DEMO_SEED, 1, 0),
    failNodes: (values['demo-fail-nodes'] ?? env.DEMO_FAIL_NODES ?? '')
      .split(',')
      .map((n) => n.trim())
      .filter(Boolean),
  };
}

function demoClusters(value: string | undefined): number {
  const n = intFlag('--demo-clusters (DEMO_CLUSTERS)', value, 2, 1);
  if (n > 2) throw new Error(`--demo-clusters (DEMO_CLUSTERS) must be 1 or 2 (got "${value}")`);
  return n;
}

/** A secret generated once into the data folder, so restarts keep sessions valid. */
function persistentSecret(dataDir: string): string {
  const file = path.join(dataDir, 'session-secret');
  if (existsSync(file)) {
    const secret = readFileSync(file, 'utf8').trim();
    if (secret.length < 16)
      throw new Error(
        `${file} must hold a secret of at least 16 characters: delete it to have one generated`,
      );
    return secret;
  }
  mkdirSync(dataDir, { recursive: true });
  const secret = randomBytes(32).toString('base64url');
  writeFileSync(file, secret, { mode: 0o600 });
  return secret;
}
