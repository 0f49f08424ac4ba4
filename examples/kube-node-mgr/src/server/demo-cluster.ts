import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { type DemoPod, DemoWorkloads } from './demo-workloads.js';

/** A taint as the Kubernetes API stores it. */
export interface Taint {
  key: string;
  value?: string;
  effect: string;
  timeAdded?: string;
}

/** The parts of a `v1.Node` the demo cluster keeps. */
export interface DemoNode {
  apiVersion: 'v1';
  kind: 'Node';
  metadata: {
    name: string;
    uid: string;
    resourceVersion: string;
    creationTimestamp: string;
    labels: Record<string, string>;
    annotations: Record<string, string>;
  };
  spec: { podCIDR?: string; providerID?: string; taints?: Taint[]; unschedulable?: boolean };
  status: Record<string, unknown>;
}

/** What a test hook sees of each request. */
export interface DemoRequestInfo {
  method: string;
  path: string;
  /** The node the request is about, when it names one. */
  node: string | undefined;
}

/** Options of {@link DemoCluster}. */
export interface DemoClusterOptions {
  /**
   * Delay added to every API call, in milliseconds.
   * @default 0
   */
  latencyMs?: number;
  /**
   * Probability (0–1) that a node `PATCH` fails with 500 InternalError before it is applied.
   * @default 0
   */
  failureRate?: number;
  /**
   * Seed of the pseudo-random generator that decides injected failures (same seed, same failures).
   * @default 1
   */
  seed?: number;
  /**
   * Nodes whose every `PATCH` fails with 500 InternalError (deterministic failure injection).
   * @default []
   */
  failNodes?: readonly string[];
  /**
   * Number of nodes (at least 12 are created; extra ones are workers).
   * @default 14
   */
  nodeCount?: number;
  /**
   * How long an evicted pod takes to terminate.
   * @default 300
   */
  podTerminationMs?: number;
  /**
   * How long a replacement pod takes to become Ready (an eviction under a budget waits for it).
   * @default 1000
   */
  podReadyMs?: number;
  /**
   * Called before each request is handled (tests use it to change a node behind a batch's back).
   * @default none
   */
  onRequest?: (info: DemoRequestInfo) => void | Promise<void>;
}

/** The defaults of {@link DemoClusterOptions}. */
export const DEMO_CLUSTER_DEFAULTS = Object.freeze({
  latencyMs: 0,
  failureRate: 0,
  seed: 1,
  failNodes: [] as readonly string[],
  nodeCount: 14,
  podTerminationMs: 300,
  podReadyMs: 1000,
});

const GIT_VERSION = 'v1.31.0';

/** mulberry32: small, fast and good enough to make injected failures reproducible. */
function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ZONES = ['eu-west-1a', 'eu-west-1b', 'eu-west-1c'] as const;

/** Builds the initial fleet: 3 control-plane nodes, general workers, GPU and spot pools. */
function initialNodes(count: number): DemoNode[] {
  const created = '2026-01-12T09:30:00Z';
  const nodes: DemoNode[] = [];
  const add = (
    name: string,
    index: number,
    extra: { labels: Record<string, string>; taints?: Taint[]; type: string },
  ) => {
    const zone = ZONES[index % ZONES.length] ?? 'eu-west-1a';
    nodes.push({
      apiVersion: 'v1',
      kind: 'Node',
      metadata: {
        name,
        uid: `6f1c0d4e-0000-4000-8000-${String(nodes.length + 1).padStart(12, '0')}`,
        resourceVersion: '0',
        creationTimestamp: created,
        labels: {
          'beta.kubernetes.io/arch': 'amd64',
          'beta.kubernetes.io/os': 'linux',
          'kubernetes.io/arch': 'amd64',
          'kubernetes.io/hostname': name,
          'kubernetes.io/os': 'linux',
          'node.kubernetes.io/instance-type': extra.type,
          'topology.kubernetes.io/region': 'eu-west-1',
          'topology.kubernetes.io/zone': zone,
          ...extra.labels,
        },
        annotations: { 'node.alpha.kubernetes.io/ttl': '0' },
      },
      spec: {
        podCIDR: `10.244.${nodes.length}.0/24`,
        providerID: `aws:///${zone}/i-0${(0x5a3c1d00 + nodes.length).toString(16)}`,
        ...(extra.taints === undefined ? {} : { taints: extra.taints }),
      },
      status: {
        addresses: [
          { type: 'InternalIP', address: `10.0.${index % 3}.${10 + nodes.length}` },
          { type: 'Hostname', address: name },
        ],
        conditions: [
          {
            type: 'Ready',
            status: 'True',
            reason: 'KubeletReady',
            message: 'kubelet is posting ready status',
            lastHeartbeatTime: created,
            lastTransitionTime: created,
          },
        ],
        nodeInfo: {
          kubeletVersion: GIT_VERSION,
          kubeProxyVersion: GIT_VERSION,
          osImage: 'Ubuntu 22.04.4 LTS',
          kernelVersion: '6.5.0-1020-aws',
          containerRuntimeVersion: 'containerd://1.7.13',
          architecture: 'amd64',
          operatingSystem: 'linux',
        },
        capacity: { cpu: '8', memory: '32Gi', pods: '110' },
        allocatable: { cpu: '7910m', memory: '31Gi', pods: '110' },
      },
    });
  };
  for (let i = 0; i < 3; i++) {
    add(`cp-${i + 1}`, i, {
      type: 'm6i.large',
      labels: { 'node-role.kubernetes.io/control-plane': '' },
      taints: [{ key: 'node-role.kubernetes.io/control-plane', effect: 'NoSchedule' }],
    });
  }
  for (let i = 0; i < 2; i++) {
    add(`gpu-${i + 1}`, i, {
      type: 'g5.2xlarge',
      labels: { 'node-role.kubernetes.io/gpu': '', 'nvidia.com/gpu.present': 'true', pool: 'gpu' },
      taints: [{ key: 'nvidia.com/gpu', value: 'present', effect: 'NoSchedule' }],
    });
  }
  for (let i = 0; i < 2; i++) {
    add(`spot-${i + 1}`, i + 1, {
      type: 'c6i.2xlarge',
      labels: { 'node-role.kubernetes.io/worker': '', 'node.kubernetes.io/lifecycle': 'spot', pool: 'spot' },
      taints: [{ key: 'node.kubernetes.io/lifecycle', value: 'spot', effect: 'PreferNoSchedule' }],
    });
  }
  const workers = Math.max(count, 12) - nodes.length;
  for (let i = 0; i < workers; i++) {
    add(`worker-${i + 1}`, i, {
      type: i % 2 === 0 ? 'm6i.2xlarge' : 'm6i.4xlarge',
      labels: { 'node-role.kubernetes.io/worker': '', pool: 'general' },
    });
  }
  return nodes;
}

type Status = { code: number; reason: string; message: string; details?: Record<string, unknown> };

function status({ code, reason, message, details }: Status): Record<string, unknown> {
  return {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message,
    reason,
    ...(details === undefined ? {} : { details }),
    code,
  };
}

class HttpStatusError extends Error {
  readonly status: Status;
  constructor(s: Status) {
    super(s.message);
    this.status = s;
  }
}

const notFound = (name: string) =>
  new HttpStatusError({
    code: 404,
    reason: 'NotFound',
    message: `nodes "${name}" not found`,
    details: { name, kind: 'nodes' },
  });

const badRequest = (message: string) => new HttpStatusError({ code: 400, reason: 'BadRequest', message });

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** RFC 7386 JSON merge patch: objects merge, `null` deletes, everything else (arrays too) replaces. */
export function jsonMergePatch(target: unknown, patch: unknown): unknown {
  if (!isRecord(patch)) return structuredClone(patch);
  const result: Record<string, unknown> = isRecord(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = jsonMergePatch(result[key], value);
  }
  return result;
}

/**
 * The strategic merge patch of a Node, for the fields this app and `kubectl taint` / `cordon` / `label`
 * touch. Maps merge as in a JSON merge patch (`null` deletes a key). Lists are replaced as a whole: the
 * real API declares `spec.taints` `listType=atomic` (no patch merge key), which is why `kubectl taint`
 * sends the complete new list. The directives `$patch: replace` / `$patch: delete` on a map, `$retainKeys`
 * and `$setElementOrder/<list>` are understood (the last two carry nothing for atomic lists and are
 * dropped).
 */
export function strategicMergePatch(target: unknown, patch: unknown): unknown {
  if (!isRecord(patch)) return structuredClone(patch);
  if (patch.$patch === 'delete') return undefined;
  const replace = patch.$patch === 'replace';
  const result: Record<string, unknown> = isRecord(target) && !replace ? { ...target } : {};
  const retain = Array.isArray(patch.$retainKeys) ? (patch.$retainKeys as unknown[]) : undefined;
  for (const [key, value] of Object.entries(patch)) {
    if (
      key === '$patch' ||
      key === '$retainKeys' ||
      key.startsWith('$setElementOrder/') ||
      key.startsWith('$deleteFromPrimitiveList/')
    ) {
      continue;
    }
    if (value === null) delete result[key];
    else {
      const merged = strategicMergePatch(result[key], value);
      if (merged === undefined) delete result[key];
      else result[key] = merged;
    }
  }
  if (retain !== undefined)
    for (const key of Object.keys(result)) if (!retain.includes(key)) delete result[key];
  return result;
}

/** Parses `a=b,c!=d,e,!f,g in (x,y)` the way the API server does for the forms this app uses. */
function labelMatcher(selector: string): (labels: Record<string, string>) => boolean {
  const tests: ((labels: Record<string, string>) => boolean)[] = [];
  // Split on commas outside parentheses.
  const parts = selector.match(/[^,(]+(\([^)]*\))?[^,]*/g) ?? [];
  for (const raw of parts) {
    const part = raw.trim();
    if (part === '') continue;
    const equality = part.match(/^([^!=\s]+)\s*(==|=|!=)\s*(\S*)$/);
    const set = part.match(/^(\S+)\s+(in|notin)\s+\(([^)]*)\)$/);
    const absent = part.match(/^!(\S+)$/);
    if (equality) {
      const [, key = '', op, value = ''] = equality;
      tests.push(op === '!=' ? (l) => l[key] !== value : (l) => l[key] === value);
    } else if (set) {
      const [, key = '', op, list = ''] = set;
      const values = list.split(',').map((v) => v.trim());
      tests.push(
        op === 'in' ? (l) => values.includes(l[key] ?? '\0') : (l) => !values.includes(l[key] ?? '\0'),
      );
    } else if (absent) {
      const key = absent[1] ?? '';
      tests.push((l) => !(key in l));
    } else if (/^\S+$/.test(part)) {
      tests.push((l) => part in l);
    } else {
      throw badRequest(`unable to parse requirement: ${part}`);
    }
  }
  return (labels) => tests.every((t) => t(labels));
}

/**
 * An in-process HTTP server that speaks the Kubernetes API for nodes, as the real one does for the calls
 * this app and `kubectl get nodes` / `kubectl taint` / `kubectl cordon` / `kubectl label` make: list (with
 * `labelSelector`), get, JSON merge patch and strategic merge patch (with the optimistic
 * `metadata.resourceVersion` check: 409 Conflict when stale), 404 for unknown nodes, `Status` objects for
 * errors, and the discovery documents kubectl reads first. No authentication: it binds to 127.0.0.1.
 */
export class DemoCluster {
  readonly #nodes = new Map<string, DemoNode>();
  readonly #options: Required<Omit<DemoClusterOptions, 'onRequest'>> & Pick<DemoClusterOptions, 'onRequest'>;
  readonly #random: () => number;
  #resourceVersion = 1000;
  #server: http.Server | undefined;
  readonly #workloads: DemoWorkloads;

  constructor(options: DemoClusterOptions = {}) {
    const merged = { ...DEMO_CLUSTER_DEFAULTS, ...options };
    if (!(merged.latencyMs >= 0)) throw new Error('DemoCluster: latencyMs must be ≥ 0');
    if (!(merged.failureRate >= 0 && merged.failureRate <= 1))
      throw new Error('DemoCluster: failureRate must be in [0, 1]');
    if (!Number.isInteger(merged.nodeCount) || merged.nodeCount < 12)
      throw new Error('DemoCluster: nodeCount must be an integer ≥ 12');
    this.#options = merged;
    this.#random = seededRandom(merged.seed);
    for (const node of initialNodes(merged.nodeCount)) {
      node.metadata.resourceVersion = String(++this.#resourceVersion);
      this.#nodes.set(node.metadata.name, node);
    }
    this.#workloads = new DemoWorkloads(
      {
        names: () => [...this.#nodes.keys()].sort(),
        schedulable: (name) => this.#nodes.get(name)?.spec.unschedulable !== true,
        nextResourceVersion: () => String(++this.#resourceVersion),
      },
      { terminationMs: merged.podTerminationMs, readyMs: merged.podReadyMs },
    );
  }

  /** The pods on a node (copies): what a drain has to move. */
  pods(node: string): DemoPod[] {
    return this.#workloads.podsOn(node);
  }

  /** The base URL once {@link listen} resolved. */
  get url(): string {
    const address = this.#server?.address() as AddressInfo | null | undefined;
    if (!address) throw new Error('DemoCluster is not listening');
    return `http://127.0.0.1:${address.port}`;
  }

  /** A copy of every node, sorted by name. */
  nodes(): DemoNode[] {
    return [...this.#nodes.values()]
      .map((n) => structuredClone(n))
      .sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
  }

  /** A copy of one node, or `undefined`. */
  node(name: string): DemoNode | undefined {
    const node = this.#nodes.get(name);
    return node === undefined ? undefined : structuredClone(node);
  }

  /** Changes a node as another client would (bumps its resourceVersion); used to provoke conflicts. */
  mutate(name: string, change: (node: DemoNode) => void): DemoNode {
    const node = this.#nodes.get(name);
    if (node === undefined) throw new Error(`no node ${name}`);
    const copy = structuredClone(node);
    change(copy);
    copy.metadata.resourceVersion = String(++this.#resourceVersion);
    this.#nodes.set(name, copy);
    return structuredClone(copy);
  }

  /** Changes the failure injection at run time. */
  setFaults(faults: { failureRate?: number; failNodes?: readonly string[]; latencyMs?: number }): void {
    if (faults.failureRate !== undefined) this.#options.failureRate = faults.failureRate;
    if (faults.failNodes !== undefined) this.#options.failNodes = faults.failNodes;
    if (faults.latencyMs !== undefined) this.#options.latencyMs = faults.latencyMs;
  }

  /** Starts listening on 127.0.0.1 (port 0: any free port). */
  async listen(port = 0, host = '127.0.0.1'): Promise<string> {
    const server = http.createServer((req, res) => {
      void this.#handle(req, res);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.#server = server;
    return this.url;
  }

  /** Stops listening and drops open connections. */
  async close(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    this.#workloads.close();
    if (server === undefined) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const send = (code: number, body: unknown) => {
      const text = JSON.stringify(body);
      res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    };
    try {
      const url = new URL(req.url ?? '/', 'http://localhost');
      const path = url.pathname.replace(/\/+$/, '') || '/';
      const method = req.method ?? 'GET';
      const match = path.match(/^\/api\/v1\/nodes(?:\/([^/]+))?$/);
      const nodeName = match?.[1] === undefined ? undefined : decodeURIComponent(match[1]);
      const body = await readBody(req);
      await this.#options.onRequest?.({ method, path, node: nodeName });
      if (this.#options.latencyMs > 0) await new Promise((r) => setTimeout(r, this.#options.latencyMs));
      const discovery = this.#discovery(path);
      if (discovery !== undefined && method === 'GET') return send(200, discovery);
      const workload = this.#workloads.handle(
        method,
        path,
        url.searchParams,
        (code, reason, message, details) => {
          throw new HttpStatusError({ code, reason, message, ...(details === undefined ? {} : { details }) });
        },
      );
      if (workload !== undefined) return send(workload.code, workload.body);
      if (match === null) {
        return send(
          404,
          status({
            code: 404,
            reason: 'NotFound',
            message: 'the server could not find the requested resource',
          }),
        );
      }
      if (nodeName === undefined) {
        if (method !== 'GET')
          throw new HttpStatusError({
            code: 405,
            reason: 'MethodNotAllowed',
            message: `${method} is not supported on nodes`,
          });
        if (url.searchParams.get('watch') === 'true' || url.searchParams.get('watch') === '1') {
          throw new HttpStatusError({
            code: 405,
            reason: 'MethodNotAllowed',
            message: 'watch is not supported by the demo cluster',
          });
        }
        return send(200, this.#list(url.searchParams.get('labelSelector') ?? '', req.headers.accept ?? ''));
      }
      const node = this.#nodes.get(nodeName);
      if (method === 'GET') {
        if (node === undefined) throw notFound(nodeName);
        return send(200, wantsTable(req.headers.accept ?? '') ? table([node]) : node);
      }
      if (method === 'PATCH') {
        if (node === undefined) throw notFound(nodeName);
        return send(
          200,
          this.#patch(
            node,
            String(req.headers['content-type'] ?? ''),
            body,
            url.searchParams.get('dryRun') === 'All',
          ),
        );
      }
      throw new HttpStatusError({
        code: 405,
        reason: 'MethodNotAllowed',
        message: `${method} is not supported by the demo cluster`,
      });
    } catch (error) {
      if (error instanceof HttpStatusError) return send(error.status.code, status(error.status));
      return send(
        500,
        status({ code: 500, reason: 'InternalError', message: `Internal error occurred: ${String(error)}` }),
      );
    }
  }

  #list(selector: string, accept: string): unknown {
    const matches = labelMatcher(selector);
    const items = this.nodes().filter((n) => matches(n.metadata.labels));
    if (wantsTable(accept)) return table(items);
    return {
      kind: 'NodeList',
      apiVersion: 'v1',
      metadata: { resourceVersion: String(this.#resourceVersion) },
      items,
    };
  }

  #patch(node: DemoNode, contentType: string, body: string, dryRun: boolean): DemoNode {
    const type = contentType.split(';')[0]?.trim() ?? '';
    let patch: unknown;
    try {
      patch = JSON.parse(body);
    } catch {
      throw badRequest('the body of the request was in an unknown format');
    }
    if (!isRecord(patch)) throw badRequest('the patch must be a JSON object');
    let next: DemoNode;
    switch (type) {
      case 'application/merge-patch+json':
        next = jsonMergePatch(node, patch) as DemoNode;
        break;
      case 'application/strategic-merge-patch+json':
        next = strategicMergePatch(node, patch) as DemoNode;
        break;
      default:
        throw new HttpStatusError({
          code: 415,
          reason: 'UnsupportedMediaType',
          message: `the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json`,
        });
    }
    const name = node.metadata.name;
    const meta = isRecord(patch.metadata) ? patch.metadata : {};
    const wanted = meta.resourceVersion;
    if (wanted !== undefined && wanted !== null && wanted !== node.metadata.resourceVersion) {
      throw new HttpStatusError({
        code: 409,
        reason: 'Conflict',
        message: `Operation cannot be fulfilled on nodes "${name}": the object has been modified; please apply your changes to the latest version and try again`,
        details: { name, kind: 'nodes' },
      });
    }
    if (next.metadata?.name !== name) throw badRequest('metadata.name cannot be changed');
    if (!isRecord(next.spec)) next.spec = {};
    // `omitempty`: an empty list is not stored.
    if (Array.isArray(next.spec.taints) && next.spec.taints.length === 0) delete next.spec.taints;
    validateNode(next);
    const inject =
      this.#options.failNodes.includes(name) ||
      (this.#options.failureRate > 0 && this.#random() < this.#options.failureRate);
    if (inject) {
      throw new HttpStatusError({
        code: 500,
        reason: 'InternalError',
        message: `Internal error occurred: injected failure patching node "${name}"`,
      });
    }
    if (dryRun) return next;
    next.metadata.uid = node.metadata.uid;
    next.metadata.creationTimestamp = node.metadata.creationTimestamp;
    if (next.spec.unschedulable === false) delete next.spec.unschedulable;
    next.metadata.labels ??= {};
    next.metadata.annotations ??= {};
    next.metadata.resourceVersion = String(++this.#resourceVersion);
    this.#nodes.set(name, next);
    return structuredClone(next);
  }

  #discovery(path: string): unknown {
    switch (path) {
      case '/version':
        return {
          major: '1',
          minor: '31',
          gitVersion: GIT_VERSION,
          gitCommit: '0000000000000000000000000000000000000000',
          gitTreeState: 'clean',
          buildDate: '2026-01-01T00:00:00Z',
          goVersion: 'go1.22.5',
          compiler: 'gc',
          platform: 'linux/amd64',
        };
      case '/api':
        return {
          kind: 'APIVersions',
          versions: ['v1'],
          serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: '127.0.0.1' }],
        };
      case '/apis':
        return {
          kind: 'APIGroupList',
          apiVersion: 'v1',
          groups: ['apps', 'policy'].map((name) => ({
            name,
            versions: [{ groupVersion: `${name}/v1`, version: 'v1' }],
            preferredVersion: { groupVersion: `${name}/v1`, version: 'v1' },
          })),
        };
      case '/apis/apps/v1':
        return {
          kind: 'APIResourceList',
          apiVersion: 'v1',
          groupVersion: 'apps/v1',
          resources: [
            {
              name: 'daemonsets',
              singularName: 'daemonset',
              namespaced: true,
              kind: 'DaemonSet',
              verbs: ['get'],
              shortNames: ['ds'],
            },
          ],
        };
      case '/apis/policy/v1':
        return {
          kind: 'APIResourceList',
          apiVersion: 'v1',
          groupVersion: 'policy/v1',
          resources: [
            {
              name: 'poddisruptionbudgets',
              singularName: 'poddisruptionbudget',
              namespaced: true,
              kind: 'PodDisruptionBudget',
              verbs: ['list'],
              shortNames: ['pdb'],
            },
          ],
        };
      case '/api/v1':
        return {
          kind: 'APIResourceList',
          groupVersion: 'v1',
          resources: [
            {
              name: 'nodes',
              singularName: 'node',
              namespaced: false,
              kind: 'Node',
              verbs: ['get', 'list', 'patch'],
              shortNames: ['no'],
            },
            {
              name: 'pods',
              singularName: 'pod',
              namespaced: true,
              kind: 'Pod',
              verbs: ['get', 'list'],
              shortNames: ['po'],
            },
            {
              name: 'pods/eviction',
              singularName: '',
              namespaced: true,
              group: 'policy',
              version: 'v1',
              kind: 'Eviction',
              verbs: ['create'],
            },
          ],
        };
      default:
        return undefined;
    }
  }
}

const TAINT_EFFECTS = ['NoSchedule', 'PreferNoSchedule', 'NoExecute'];

/** The server-side validation kubectl would otherwise meet on a real cluster, for what a patch can break. */
function validateNode(node: DemoNode): void {
  if (!isRecord(node.spec)) throw badRequest('spec must be an object');
  const taints = node.spec.taints ?? [];
  if (!Array.isArray(taints)) throw badRequest('spec.taints must be a list');
  const seen = new Set<string>();
  for (const taint of taints) {
    if (!isRecord(taint) || typeof taint.key !== 'string' || taint.key === '') {
      throw invalid(node.metadata.name, 'spec.taints[].key: Required value');
    }
    if (!TAINT_EFFECTS.includes(taint.effect)) {
      throw invalid(
        node.metadata.name,
        `spec.taints[].effect: Unsupported value: "${String(taint.effect)}": supported values: "NoSchedule", "PreferNoSchedule", "NoExecute"`,
      );
    }
    const id = `${taint.key}:${taint.effect}`;
    if (seen.has(id)) throw invalid(node.metadata.name, `spec.taints: Duplicate value: "${id}"`);
    seen.add(id);
  }
  for (const [key, value] of Object.entries(node.metadata.labels ?? {})) {
    if (typeof value !== 'string')
      throw invalid(node.metadata.name, `metadata.labels: Invalid value: ${key}`);
  }
}

function invalid(name: string, message: string): HttpStatusError {
  return new HttpStatusError({
    code: 422,
    reason: 'Invalid',
    message: `Node "${name}" is invalid: ${message}`,
    details: { name, kind: 'Node' },
  });
}

function wantsTable(accept: string): boolean {
  return accept.includes('as=Table');
}

/** The server-side printing kubectl asks for (`Accept: …;as=Table;g=meta.k8s.io;v=v1`). */
function table(nodes: DemoNode[]): unknown {
  const now = Date.now();
  return {
    kind: 'Table',
    apiVersion: 'meta.k8s.io/v1',
    metadata: {},
    columnDefinitions: [
      { name: 'Name', type: 'string', format: 'name', description: 'Name', priority: 0 },
      { name: 'Status', type: 'string', format: '', description: 'Node status', priority: 0 },
      { name: 'Roles', type: 'string', format: '', description: 'Node roles', priority: 0 },
      { name: 'Age', type: 'string', format: '', description: 'Age', priority: 0 },
      { name: 'Version', type: 'string', format: '', description: 'Kubelet version', priority: 0 },
      { name: 'Zone', type: 'string', format: '', description: 'Zone', priority: 1 },
      { name: 'Taints', type: 'string', format: '', description: 'Taints', priority: 1 },
    ],
    rows: nodes.map((n) => {
      const roles = Object.keys(n.metadata.labels)
        .filter((k) => k.startsWith('node-role.kubernetes.io/'))
        .map((k) => k.slice('node-role.kubernetes.io/'.length))
        .join(',');
      const days = Math.floor((now - Date.parse(n.metadata.creationTimestamp)) / 86_400_000);
      return {
        cells: [
          n.metadata.name,
          n.spec.unschedulable ? 'Ready,SchedulingDisabled' : 'Ready',
          roles || '<none>',
          `${days}d`,
          GIT_VERSION,
          n.metadata.labels['topology.kubernetes.io/zone'] ?? '',
          (n.spec.taints ?? []).map((t) => `${t.key}${t.value ? `=${t.value}` : ''}:${t.effect}`).join(',') ||
            '<none>',
        ],
        object: { kind: 'PartialObjectMetadata', apiVersion: 'meta.k8s.io/v1', metadata: n.metadata },
      };
    }),
  };
}

function readBody(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > 1024 * 1024) {
        reject(badRequest('request body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}
