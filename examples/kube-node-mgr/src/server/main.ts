/* The command-line entry: `node dist/server.mjs [options]` (see USAGE). */
import { fileURLToPath } from 'node:url';
import { createApp } from './app.js';
import { hashPassword, loadUsersFile, SessionManager, type UserRecord } from './auth.js';
import { type Cluster, clustersOfKubeConfig } from './clusters.js';
import { loadConfig, USAGE } from './config.js';
import { type DemoClusters, startDemoClusters } from './demo-clusters.js';
import { loadKubeConfig } from './kube-nodes.js';
import { openStore } from './store.js';

const log = (message: string) => process.stdout.write(`${message}\n`);

/** The demo users when no users file is given (the passwords are printed at start). */
const DEMO_USERS = [
  { username: 'demo', password: 'demo', role: 'admin' },
  { username: 'ops', password: 'ops', role: 'operator' },
  { username: 'viewer', password: 'viewer', role: 'viewer' },
] as const;

async function main(): Promise<void> {
  const config = loadConfig(
    process.argv.slice(2),
    process.env,
    process.cwd(),
    fileURLToPath(new URL('./web/', import.meta.url)),
  );
  if (config === 'help') {
    log(USAGE);
    return;
  }
  const logger = {
    debug: () => {},
    info: () => {},
    warn: (obj: unknown, msg?: string) =>
      process.stderr.write(`[${config.name}] warn ${msg ?? ''} ${JSON.stringify(obj)}\n`),
    error: (obj: unknown, msg?: string) =>
      process.stderr.write(`[${config.name}] error ${msg ?? ''} ${JSON.stringify(obj)}\n`),
  };

  let demo: DemoClusters | undefined;
  let kubeDescription: string;
  let clusters: Cluster[];
  if (config.kube.type === 'demo') {
    demo = await startDemoClusters(config.demo.clusters, config.demo.port, {
      latencyMs: config.demo.latencyMs,
      failureRate: config.demo.failureRate,
      seed: config.demo.seed,
      failNodes: config.demo.failNodes,
    });
    clusters = clustersOfKubeConfig(
      loadKubeConfig({ type: 'servers', servers: demo.clusters.map(({ name, url }) => ({ name, url })) }),
      undefined,
      { requestTimeoutMs: config.kubeTimeoutMs },
    );
    kubeDescription = demo.clusters
      .map((c) => `${c.name} demo cluster at ${c.url} (try: kubectl --server=${c.url} get nodes)`)
      .join('\n    ');
  } else {
    clusters = clustersOfKubeConfig(
      loadKubeConfig(config.kube),
      config.kube.type === 'kubeconfig' ? config.kube.context : undefined,
      { requestTimeoutMs: config.kubeTimeoutMs },
    );
    kubeDescription = clusters.map((c) => `${c.name} → ${c.nodes.server}`).join('\n    ');
  }

  let users: UserRecord[];
  let demoLogin: string | undefined;
  if (config.usersFile !== undefined) users = loadUsersFile(config.usersFile);
  else {
    users = DEMO_USERS.map((u) => ({
      username: u.username,
      passwordHash: hashPassword(u.password),
      role: u.role,
    }));
    demoLogin = DEMO_USERS.map((u) => `${u.username} / ${u.password} (${u.role})`).join(', ');
  }

  const opened = await openStore({
    databaseUrl: config.databaseUrl,
    dataDir: config.dataDir,
    onError: (error) => logger.warn({ err: String(error) }, 'store background error'),
  });
  // Batches, locks and cordon notes written before this server knew several clusters belong to the default.
  await opened.db.adoptUnassigned(clusters[0]?.name ?? 'default');
  const sessions = new SessionManager({
    secret: config.sessionSecret,
    ttlMs: 12 * 3600_000,
    users,
    db: opened.db,
  });
  const app = createApp({
    store: opened.store,
    db: opened.db,
    clusters,
    sessions,
    concurrency: config.concurrency,
    progress: {
      leaseTtlMs: config.leaseTtlMs,
      leaseRenewIntervalMs: Math.floor(config.leaseTtlMs / 3),
      reapIntervalMs: Math.min(5000, config.leaseTtlMs),
    },
    staticDir: config.staticDir,
    trustProxy: config.trustProxy,
    ...(config.proxySecret === undefined ? {} : { proxySecret: config.proxySecret }),
    allowedOrigins: config.allowedOrigins,
    allowedHosts: config.allowedHosts,
    logger,
  });
  await new Promise<void>((resolve, reject) => {
    app.server.once('error', reject);
    // A backlog of 4096 (Node's default is 511): a replica's crowd reconnecting at once queues instead of
    // being dropped and retried by TCP a second later (docs/operations.md, "The listen backlog").
    app.server.listen({ port: config.port, host: config.host, backlog: 4096 }, () => resolve());
  });
  const address = app.server.address();
  const port = typeof address === 'object' && address !== null ? address.port : config.port;
  const shownHost = config.host === '0.0.0.0' || config.host === '::' ? 'localhost' : config.host;
  log(`[${config.name}] kube-node-mgr listening on http://${shownHost}:${port}`);
  log(`[${config.name}]   kubernetes: ${kubeDescription}`);
  log(`[${config.name}]   storage:    ${opened.description}`);
  if (demoLogin !== undefined) log(`[${config.name}]   demo login: ${demoLogin}`);

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log(`[${config.name}] ${signal}: shutting down`);
    // Each step runs though an earlier one failed: a throw from app.close() left the database open and
    // ended the process on an unhandled rejection, without saying which step failed.
    let failed = false;
    for (const [what, close] of [
      ['the app', () => app.close()],
      ['the database', () => opened.close()],
      ['the demo cluster', async () => demo?.close()],
    ] as const) {
      try {
        await close();
      } catch (error) {
        failed = true;
        log(
          `[${config.name}] closing ${what} failed: ${error instanceof Error ? error.message : String(error)}`,
        );
      }
    }
    process.exit(failed ? 1 : 0);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
}

main().catch((error: unknown) => {
  process.stderr.write(`kube-node-mgr: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
