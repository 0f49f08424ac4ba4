// The HTTP half of scripts/docker-smoke.sh: against a running container of the example, logs in with the
// demo credentials, taints every worker node in one batch, waits for the task's final state, and checks the
// nodes in the demo cluster's own API (what kubectl would show). Exits non-zero on the first mismatch.
// Usage: node scripts/docker-smoke-check.mjs <app url> <demo cluster url>
const [appUrl, demoUrl] = process.argv.slice(2);
if (!appUrl || !demoUrl) {
  process.stderr.write('usage: node scripts/docker-smoke-check.mjs <app url> <demo cluster url>\n');
  process.exit(2);
}
const TAINT_KEY = 'smoke.finishline.dev/docker';
const runId = `run-${Date.now().toString(36)}`;
const started = Date.now();
const log = (message) =>
  process.stdout.write(`[smoke ${((Date.now() - started) / 1000).toFixed(1)}s] ${message}\n`);
const fail = (message) => {
  process.stderr.write(`docker smoke check failed: ${message}\n`);
  process.exit(1);
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function json(url, init = {}) {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  let body = null;
  try {
    body = text === '' ? null : JSON.parse(text);
  } catch {
    fail(`${init.method ?? 'GET'} ${url}: ${res.status}, not JSON: ${text.slice(0, 200)}`);
  }
  return { status: res.status, headers: res.headers, body };
}

// 1. The container is up.
const deadline = Date.now() + 60_000;
for (;;) {
  const ok = await fetch(`${appUrl}/healthz`, { signal: AbortSignal.timeout(2000) }).then(
    (r) => r.ok,
    () => false,
  );
  if (ok) break;
  if (Date.now() > deadline) fail(`${appUrl}/healthz did not answer 200 within 60 s`);
  await sleep(250);
}
log(`healthz ok at ${appUrl}`);

// 2. Log in as the demo user.
const login = await json(`${appUrl}/api/login`, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ username: 'demo', password: 'demo' }),
});
if (login.status !== 200) fail(`login: ${login.status} ${JSON.stringify(login.body)}`);
const cookie = (login.headers.get('set-cookie') ?? '').split(';')[0];
const csrf = login.body?.csrfToken;
if (!cookie || typeof csrf !== 'string') fail('login returned no session cookie or CSRF token');
log('logged in as demo');

// 3. Taint every worker node in one batch.
const nodes = await json(`${appUrl}/api/nodes`, { headers: { cookie } });
if (nodes.status !== 200) fail(`GET /api/nodes: ${nodes.status}`);
const workers = nodes.body.nodes.map((n) => n.name).filter((name) => name.startsWith('worker-'));
if (workers.length === 0) fail('the demo cluster has no worker nodes');
const batch = await json(`${appUrl}/api/batch`, {
  method: 'POST',
  headers: { cookie, 'content-type': 'application/json', 'x-csrf-token': csrf },
  body: JSON.stringify({
    operation: 'taint_add',
    key: TAINT_KEY,
    value: runId,
    effect: 'NoSchedule',
    nodes: workers,
  }),
});
if (batch.status !== 202) fail(`POST /api/batch: ${batch.status} ${JSON.stringify(batch.body)}`);
const taskId = batch.body.taskId;
log(`batch ${taskId}: taint ${TAINT_KEY}=${runId}:NoSchedule on ${workers.length} nodes`);

// 4. Its final state, over the progress HTTP API.
let task;
const taskDeadline = Date.now() + 60_000;
for (;;) {
  const res = await json(`${appUrl}/progress/tasks/${encodeURIComponent(taskId)}`, { headers: { cookie } });
  if (res.status !== 200) fail(`GET task: ${res.status} ${JSON.stringify(res.body)}`);
  task = res.body.task;
  if (task.status !== 'running') break;
  if (Date.now() > taskDeadline) fail(`task still running after 60 s: ${JSON.stringify(task)}`);
  await sleep(100);
}
if (task.status !== 'completed' || task.succeeded !== workers.length || task.failed !== 0)
  fail(
    `task ended ${task.status}, ${task.succeeded} succeeded, ${task.failed} failed: ${JSON.stringify(task)}`,
  );
log(`task completed: ${task.succeeded}/${task.total} succeeded`);

// 5. The nodes as the cluster has them.
const cluster = await json(`${demoUrl}/api/v1/nodes`);
if (cluster.status !== 200) fail(`demo cluster GET /api/v1/nodes: ${cluster.status}`);
for (const node of cluster.body.items) {
  const name = node.metadata.name;
  const taint = (node.spec.taints ?? []).find((t) => t.key === TAINT_KEY);
  const expected = workers.includes(name);
  if (expected && (taint?.value !== runId || taint.effect !== 'NoSchedule'))
    fail(`node ${name} lacks the taint: ${JSON.stringify(node.spec.taints)}`);
  if (!expected && taint !== undefined) fail(`node ${name} was not selected but has the taint`);
}
log(
  `cluster state ok: ${workers.length} workers tainted, ${cluster.body.items.length - workers.length} other nodes untouched`,
);
