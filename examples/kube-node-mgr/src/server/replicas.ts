/* `npm run serve:replicas`: N replicas on one Postgres behind a round-robin proxy without affinity (see REPLICAS_USAGE). */
import { fileURLToPath } from 'node:url';
import { startReplicaSet } from './replica-set.js';
import { loadReplicasConfig, REPLICAS_USAGE } from './replicas-config.js';

const out = (text: string) => process.stdout.write(text);

async function main(): Promise<void> {
  const config = loadReplicasConfig(process.argv.slice(2), process.env);
  if (config === 'help') {
    out(REPLICAS_USAGE);
    return;
  }
  const serverScript = fileURLToPath(new URL('./server.mjs', import.meta.url));
  out(
    `starting ${config.databaseUrl === undefined ? 'embedded Postgres, ' : ''}` +
      `${config.demo === undefined ? '' : 'the demo cluster, '}${config.replicas} replicas…\n`,
  );
  const set = await startReplicaSet({
    serverScript,
    replicas: config.replicas,
    port: config.port,
    host: config.host,
    ...(config.demo === undefined
      ? { kubeArgs: config.kubeArgs }
      : { demoPort: config.demo.port, demo: config.demo.options, demoClusters: config.demo.clusters }),
    serverArgs: config.serverArgs,
    trustProxy: config.trustProxy,
    namePrefix: config.namePrefix,
    // Replicas print their banner lines prefixed with their name; the rest (warnings) too.
    onOutput: out,
    ...(config.databaseUrl === undefined ? {} : { databaseUrl: config.databaseUrl }),
  });
  out(`\nkube-node-mgr: ${set.replicas.length} replicas behind a round-robin proxy (no affinity)\n`);
  out(`  open:         ${set.url}\n`);
  // The demo users exist when no users file is given (each replica prints them too).
  if (!config.serverArgs.includes('--users-file') && !process.env.USERS_FILE)
    out(`  demo login:   demo / demo, ops / ops\n`);
  out(`  replicas:     ${set.replicas.map((r) => r.url).join(', ')}\n`);
  if (set.demoUrl !== undefined)
    out(`  demo cluster: ${set.demoUrl} (kubectl --server=${set.demoUrl} get nodes)\n`);
  out(`  postgres:     ${set.databaseUrl.replace(/:[^:@/]+@/, ':***@')}\n`);

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    out('stopping…\n');
    await set.stop();
    process.exit(0);
  };
  process.on('SIGINT', () => void stop());
  process.on('SIGTERM', () => void stop());
}

main().catch((error: unknown) => {
  process.stderr.write(`kube-node-mgr replicas: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
