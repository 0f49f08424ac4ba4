/**
 * The pods of the demo cluster, so that draining means something: DaemonSet pods on every node (a drain
 * skips them), Deployment pods on the workers, PodDisruptionBudgets over two of the Deployments, and the
 * Eviction API that honours them (429 while an eviction would take an app below its budget). An evicted
 * pod terminates after a moment; its Deployment starts a replacement on another schedulable node, which
 * becomes Ready a moment later — so evictions under a budget go one at a time, as on a real cluster.
 */
import { randomUUID } from 'node:crypto';

/** A pod, with the fields kubectl and the app read. */
export interface DemoPod {
  apiVersion: 'v1';
  kind: 'Pod';
  metadata: {
    name: string;
    namespace: string;
    uid: string;
    resourceVersion: string;
    creationTimestamp: string;
    deletionTimestamp?: string;
    labels: Record<string, string>;
    ownerReferences: { apiVersion: string; kind: string; name: string; uid: string; controller: true }[];
  };
  spec: { nodeName: string; containers: { name: string; image: string }[] };
  status: { phase: 'Running'; conditions: { type: 'Ready'; status: 'True' | 'False' }[] };
}

interface Workload {
  namespace: string;
  name: string;
  kind: 'DaemonSet' | 'ReplicaSet';
  uid: string;
  image: string;
  replicas: number;
  /** The PodDisruptionBudget over this workload's pods, if any. */
  pdb?: { name: string; minAvailable?: number; maxUnavailable?: number };
}

/** What the workloads need to know of the nodes. */
export interface NodeAccess {
  names(): string[];
  /** Whether new pods may land on the node (not cordoned, not tainted NoSchedule for ordinary pods). */
  schedulable(name: string): boolean;
  nextResourceVersion(): string;
}

/** How long an evicted pod takes to terminate, and a replacement to become Ready. */
export interface WorkloadTimings {
  terminationMs: number;
  readyMs: number;
}

type Answer = { code: number; body: unknown };
type Fail = (code: number, reason: string, message: string, details?: Record<string, unknown>) => never;

/** The pods, DaemonSets and PodDisruptionBudgets of the demo cluster, and their API. */
export class DemoWorkloads {
  readonly #pods = new Map<string, DemoPod>();
  readonly #workloads: Workload[];
  readonly #nodes: NodeAccess;
  readonly #timings: WorkloadTimings;
  readonly #timers = new Set<ReturnType<typeof setTimeout>>();
  #serial = 0;

  constructor(nodes: NodeAccess, timings: WorkloadTimings) {
    this.#nodes = nodes;
    this.#timings = timings;
    this.#workloads = [
      {
        namespace: 'kube-system',
        name: 'kube-proxy',
        kind: 'DaemonSet',
        uid: randomUUID(),
        image: 'registry.k8s.io/kube-proxy:v1.31.0',
        replicas: 0,
      },
      {
        namespace: 'monitoring',
        name: 'node-exporter',
        kind: 'DaemonSet',
        uid: randomUUID(),
        image: 'quay.io/prometheus/node-exporter:v1.8.2',
        replicas: 0,
      },
      {
        namespace: 'shop',
        name: 'web',
        kind: 'ReplicaSet',
        uid: randomUUID(),
        image: 'nginx:1.27',
        replicas: 4,
        pdb: { name: 'web', minAvailable: 3 },
      },
      {
        namespace: 'shop',
        name: 'api',
        kind: 'ReplicaSet',
        uid: randomUUID(),
        image: 'ghcr.io/example/api:2.4',
        replicas: 3,
        pdb: { name: 'api', maxUnavailable: 1 },
      },
      {
        namespace: 'batch',
        name: 'reports',
        kind: 'ReplicaSet',
        uid: randomUUID(),
        image: 'ghcr.io/example/reports:1.0',
        replicas: 2,
      },
    ];
    const names = nodes.names();
    for (const w of this.#workloads) {
      if (w.kind === 'DaemonSet') for (const node of names) this.#create(w, node, true);
    }
    const workers = names.filter((n) => n.startsWith('worker-'));
    let next = 0;
    for (const w of this.#workloads) {
      if (w.kind !== 'ReplicaSet') continue;
      for (let i = 0; i < w.replicas; i++)
        this.#create(w, workers[next++ % workers.length] ?? 'worker-1', true);
    }
  }

  /** Every pod on a node (copies), for tests. */
  podsOn(node: string): DemoPod[] {
    return [...this.#pods.values()].filter((p) => p.spec.nodeName === node).map((p) => structuredClone(p));
  }

  /** Stops the timers of pending terminations and replacements. */
  close(): void {
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
  }

  #later(ms: number, fn: () => void): void {
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      fn();
    }, ms);
    timer.unref();
    this.#timers.add(timer);
  }

  #create(w: Workload, node: string, ready: boolean): DemoPod {
    const suffix = (++this.#serial).toString(36).padStart(5, 'x');
    const name = w.kind === 'DaemonSet' ? `${w.name}-${node}` : `${w.name}-7d9f8-${suffix}`;
    const pod: DemoPod = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name,
        namespace: w.namespace,
        uid: randomUUID(),
        resourceVersion: this.#nodes.nextResourceVersion(),
        creationTimestamp: new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'),
        labels: { app: w.name },
        ownerReferences: [
          {
            apiVersion: 'apps/v1',
            kind: w.kind,
            name: w.kind === 'DaemonSet' ? w.name : `${w.name}-7d9f8`,
            uid: w.uid,
            controller: true,
          },
        ],
      },
      spec: { nodeName: node, containers: [{ name: w.name, image: w.image }] },
      status: { phase: 'Running', conditions: [{ type: 'Ready', status: ready ? 'True' : 'False' }] },
    };
    this.#pods.set(`${w.namespace}/${name}`, pod);
    return pod;
  }

  #workloadOf(pod: DemoPod): Workload | undefined {
    const owner = pod.metadata.ownerReferences[0];
    return this.#workloads.find((w) => w.uid === owner?.uid);
  }

  #healthy(w: Workload): number {
    return [...this.#pods.values()].filter(
      (p) =>
        this.#workloadOf(p) === w &&
        p.metadata.deletionTimestamp === undefined &&
        p.status.conditions[0]?.status === 'True',
    ).length;
  }

  #budget(w: Workload): { desired: number; healthy: number; allowed: number } {
    const healthy = this.#healthy(w);
    const pdb = w.pdb;
    const desired =
      pdb === undefined ? 0 : (pdb.minAvailable ?? Math.max(0, w.replicas - (pdb.maxUnavailable ?? 0)));
    return { desired, healthy, allowed: Math.max(0, healthy - desired) };
  }

  /** Answers the pod, eviction, DaemonSet and PDB routes; `undefined` for any other path. */
  handle(method: string, path: string, query: URLSearchParams, fail: Fail, body = ''): Answer | undefined {
    let m = path.match(/^\/api\/v1\/(?:namespaces\/([^/]+)\/)?pods$/);
    if (m !== null) {
      if (method !== 'GET') fail(405, 'MethodNotAllowed', `${method} is not supported on pods`);
      return { code: 200, body: this.#listPods(m[1], query, fail) };
    }
    m = path.match(/^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)(\/eviction)?$/);
    if (m !== null) {
      const [, ns = '', name = '', eviction] = m;
      const pod = this.#pods.get(`${ns}/${decodeURIComponent(name)}`);
      if (eviction !== undefined) {
        if (method !== 'POST') fail(405, 'MethodNotAllowed', 'evictions are created with POST');
        if (pod === undefined) fail(404, 'NotFound', `pods "${name}" not found`, { name, kind: 'pods' });
        return this.#evict(pod as DemoPod, preconditionUid(body), fail);
      }
      if (pod === undefined) fail(404, 'NotFound', `pods "${name}" not found`, { name, kind: 'pods' });
      if (method !== 'GET') fail(405, 'MethodNotAllowed', `${method} is not supported on a pod`);
      return { code: 200, body: pod };
    }
    m = path.match(/^\/apis\/apps\/v1\/namespaces\/([^/]+)\/daemonsets\/([^/]+)$/);
    if (m !== null) {
      const w = this.#workloads.find(
        (x) => x.kind === 'DaemonSet' && x.namespace === m?.[1] && x.name === m?.[2],
      );
      if (w === undefined)
        fail(404, 'NotFound', `daemonsets.apps "${m[2]}" not found`, { name: m[2], kind: 'daemonsets' });
      return { code: 200, body: this.#daemonSet(w as Workload) };
    }
    m = path.match(/^\/apis\/policy\/v1\/(?:namespaces\/([^/]+)\/)?poddisruptionbudgets$/);
    if (m !== null) {
      const items = this.#workloads
        .filter((w) => w.pdb !== undefined && (m?.[1] === undefined || w.namespace === m[1]))
        .map((w) => this.#pdbObject(w));
      return {
        code: 200,
        body: { kind: 'PodDisruptionBudgetList', apiVersion: 'policy/v1', metadata: {}, items },
      };
    }
    return undefined;
  }

  #listPods(namespace: string | undefined, query: URLSearchParams, fail: Fail): unknown {
    let pods = [...this.#pods.values()].filter(
      (p) => namespace === undefined || p.metadata.namespace === namespace,
    );
    for (const term of (query.get('fieldSelector') ?? '').split(',').filter(Boolean)) {
      const eq = term.match(/^([\w.]+)(==|=|!=)(.*)$/);
      if (eq === null) fail(400, 'BadRequest', `invalid field selector: ${term}`);
      const [, field, op, value] = eq as RegExpMatchArray;
      const read = (p: DemoPod) =>
        field === 'spec.nodeName'
          ? p.spec.nodeName
          : field === 'metadata.name'
            ? p.metadata.name
            : field === 'metadata.namespace'
              ? p.metadata.namespace
              : field === 'status.phase'
                ? p.status.phase
                : fail(400, 'BadRequest', `field label not supported: ${field}`);
      pods = pods.filter((p) => (op === '!=' ? read(p) !== value : read(p) === value));
    }
    const selector = query.get('labelSelector');
    if (selector) {
      const [key, value] = selector.split('=');
      pods = pods.filter((p) =>
        value === undefined
          ? // Own labels only (`in` also finds `constructor`, `toString`, … on every object).
            key !== undefined && Object.hasOwn(p.metadata.labels, key)
          : p.metadata.labels[key ?? ''] === value,
      );
    }
    pods.sort((a, b) =>
      `${a.metadata.namespace}/${a.metadata.name}`.localeCompare(
        `${b.metadata.namespace}/${b.metadata.name}`,
      ),
    );
    return {
      kind: 'PodList',
      apiVersion: 'v1',
      metadata: { resourceVersion: this.#nodes.nextResourceVersion() },
      items: pods,
    };
  }

  /**
   * As the API server's eviction: a pod already leaving is deleted at once (no budget check), any other
   * one is checked against its budget (429) first, and only the deletion checks the `uid` precondition —
   * so a pod recreated under the name gets the budget's 429 while it refuses, else 409 Conflict.
   */
  #evict(pod: DemoPod, uid: string | undefined, fail: Fail): Answer {
    const checkUid = () => {
      if (uid !== undefined && uid !== pod.metadata.uid)
        fail(
          409,
          'Conflict',
          `Operation cannot be fulfilled on Pod "${pod.metadata.name}": the UID in the precondition (${uid}) does not match the UID in record (${pod.metadata.uid}). The object might have been deleted and then recreated`,
          { name: pod.metadata.name, kind: 'Pod' },
        );
    };
    if (pod.metadata.deletionTimestamp !== undefined) {
      checkUid();
      return {
        code: 201,
        body: { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', code: 201 },
      };
    }
    const w = this.#workloadOf(pod);
    if (w?.pdb !== undefined) {
      const budget = this.#budget(w);
      const podReady = pod.status.conditions[0]?.status === 'True';
      // An unready pod may always go (it counts for nothing); a ready one only within the budget.
      if (podReady && budget.allowed < 1) {
        fail(429, 'TooManyRequests', "Cannot evict pod as it would violate the pod's disruption budget.", {
          causes: [
            {
              reason: 'DisruptionBudget',
              message: `The disruption budget ${w.pdb.name} needs ${budget.desired} healthy pods and has ${budget.healthy} currently`,
            },
          ],
        });
      }
    }
    checkUid();
    pod.metadata.deletionTimestamp = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
    pod.metadata.resourceVersion = this.#nodes.nextResourceVersion();
    const key = `${pod.metadata.namespace}/${pod.metadata.name}`;
    this.#later(this.#timings.terminationMs, () => {
      this.#pods.delete(key);
      // The controller replaces the pod; a DaemonSet's only on its own node (skipped while cordoned).
      if (w === undefined || w.kind === 'DaemonSet') {
        if (w !== undefined && this.#nodes.schedulable(pod.spec.nodeName))
          this.#create(w, pod.spec.nodeName, true);
        return;
      }
      const target = this.#placement(pod.spec.nodeName);
      if (target === undefined) return;
      const replacement = this.#create(w, target, false);
      this.#later(this.#timings.readyMs, () => {
        const condition = replacement.status.conditions[0];
        if (condition !== undefined) condition.status = 'True';
        replacement.metadata.resourceVersion = this.#nodes.nextResourceVersion();
      });
    });
    return {
      code: 201,
      body: { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', code: 201 },
    };
  }

  /** The schedulable worker with the fewest pods (not the node being drained). */
  #placement(from: string): string | undefined {
    const counts = new Map<string, number>();
    for (const name of this.#nodes.names()) {
      if (name === from || !name.startsWith('worker-') || !this.#nodes.schedulable(name)) continue;
      counts.set(name, 0);
    }
    for (const p of this.#pods.values()) {
      const n = counts.get(p.spec.nodeName);
      if (n !== undefined) counts.set(p.spec.nodeName, n + 1);
    }
    return [...counts].sort((a, b) => a[1] - b[1] || a[0].localeCompare(b[0]))[0]?.[0];
  }

  #daemonSet(w: Workload): unknown {
    const n = [...this.#pods.values()].filter((p) => this.#workloadOf(p) === w).length;
    return {
      apiVersion: 'apps/v1',
      kind: 'DaemonSet',
      metadata: {
        name: w.name,
        namespace: w.namespace,
        uid: w.uid,
        resourceVersion: '1',
        labels: { app: w.name },
      },
      spec: {
        selector: { matchLabels: { app: w.name } },
        template: {
          metadata: { labels: { app: w.name } },
          spec: { containers: [{ name: w.name, image: w.image }] },
        },
      },
      status: { currentNumberScheduled: n, desiredNumberScheduled: n, numberReady: n, numberMisscheduled: 0 },
    };
  }

  #pdbObject(w: Workload): unknown {
    const pdb = w.pdb as NonNullable<Workload['pdb']>;
    const budget = this.#budget(w);
    return {
      apiVersion: 'policy/v1',
      kind: 'PodDisruptionBudget',
      metadata: { name: pdb.name, namespace: w.namespace, uid: `${w.uid}-pdb`, resourceVersion: '1' },
      spec: {
        selector: { matchLabels: { app: w.name } },
        ...(pdb.minAvailable === undefined ? {} : { minAvailable: pdb.minAvailable }),
        ...(pdb.maxUnavailable === undefined ? {} : { maxUnavailable: pdb.maxUnavailable }),
      },
      status: {
        currentHealthy: budget.healthy,
        desiredHealthy: budget.desired,
        disruptionsAllowed: budget.allowed,
        expectedPods: w.replicas,
        observedGeneration: 1,
      },
    };
  }
}

/** `deleteOptions.preconditions.uid` of an Eviction body, if it has one (a body not JSON has none). */
function preconditionUid(body: string): string | undefined {
  try {
    const uid = (JSON.parse(body) as { deleteOptions?: { preconditions?: { uid?: unknown } } } | null)
      ?.deleteOptions?.preconditions?.uid;
    return typeof uid === 'string' && uid !== '' ? uid : undefined;
  } catch {
    return undefined;
  }
}
