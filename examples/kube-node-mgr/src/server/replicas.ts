/* `npm run start:replicas`: 3 replicas on an embedded Postgres behind a round-robin proxy without affinity. */
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { startReplicaSet } from './replica-set.js';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    replicas: { type: 'string' },
    'demo-latency-ms': { type: 'string' },
    'demo-failure-rate': { type: 'string' },
    concurrency: { type: 'string' },
  },
});
const out = (text: string) => process.stdout.write(text);
const serverScript = fileURLToPath(new URL('./server.mjs', import.meta.url));
const latencyMs = Number(values['demo-latency-ms'] ?? process.env.DEMO_LATENCY_MS ?? 150);
const failureRate = Number(values['demo-failure-rate'] ?? process.env.DEMO_FAILURE_RATE ?? 0);

out('starting embedded Postgres, the demo cluster and the replicas…\n');
const set = await startReplicaSet({
  serverScript,
  replicas: Number(values.replicas ?? 3),
  port: Number(values.port ?? process.env.PORT ?? 3000),
  demo: { latencyMs, failureRate },
  serverArgs: values.concurrency === undefined ? [] : ['--concurrency', values.concurrency],
  // Replicas print their banner lines prefixed with their name; the rest (warnings) too.
  onOutput: out,
  ...(process.env.DATABASE_URL ? { databaseUrl: process.env.DATABASE_URL } : {}),
});
out(`\nkube-node-mgr: ${set.replicas.length} replicas behind a round-robin proxy (no affinity)\n`);
out(`  open:         ${set.url}\n`);
out(`  demo login:   demo / demo, ops / ops\n`);
out(`  replicas:     ${set.replicas.map((r) => r.url).join(', ')}\n`);
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
