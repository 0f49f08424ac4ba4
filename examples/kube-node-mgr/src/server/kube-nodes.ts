import { AsyncLocalStorage } from 'node:async_hooks';
import {
  AppsV1Api,
  CoreV1Api,
  createConfiguration,
  KubeConfig,
  PatchStrategy,
  type RequestContext,
  ResponseContext,
  ServerConfiguration,
  setHeaderOptions,
  type V1Node,
  type V1Pod,
  type V1PodSpec,
  wrapHttpLibrary,
} from '@kubernetes/client-node';
import fetch from 'node-fetch';
import type { NodeView } from '../shared/api-types.js';

/** How the app reaches Kubernetes. */
export type KubeSource =
  | { type: 'kubeconfig'; path: string | undefined; context: string | undefined }
  | { type: 'in-cluster' }
  | { type: 'server'; url: string }
  /** Several API servers without credentials, each a context of its name (e.g. the demo clusters). */
  | { type: 'servers'; servers: { name: string; url: string }[] };

export type { NodeView };

/** An error from the Kubernetes API, with its HTTP status and the `Status` message. */
export class KubeApiError extends Error {
  readonly status: number;
  readonly reason: string;
  /** The answer's `Retry-After` in seconds (the server asks to be called again later), else `null`. */
  readonly retryAfterS: number | null;
  constructor(status: number, reason: string, message: string, retryAfterS: number | null = null) {
    super(message);
    this.name = 'KubeApiError';
    this.status = status;
    this.reason = reason;
    this.retryAfterS = retryAfterS;
  }
}

/** `Retry-After` in whole seconds, as the API server sends it; `null` when absent or not a number. */
function retryAfterOf(headers: unknown): number | null {
  const value = (headers as Record<string, unknown> | undefined)?.['retry-after'];
  if (typeof value !== 'string' || !/^\d{1,9}$/.test(value.trim())) return null;
  return Number(value.trim());
}

/** Builds a `KubeConfig` from a source. */
export function loadKubeConfig(source: KubeSource): KubeConfig {
  const kc = new KubeConfig();
  switch (source.type) {
    case 'kubeconfig':
      if (source.path === undefined) kc.loadFromDefault();
      else {
        try {
          kc.loadFromFile(source.path);
        } catch (error) {
          // The YAML parser's message names no file: "unexpected end of the stream within a flow collection".
          const message = error instanceof Error ? error.message : String(error);
          throw new Error(`kubeconfig ${source.path}: ${message.split('\n')[0]}`, { cause: error });
        }
      }
      if (source.context !== undefined) kc.setCurrentContext(source.context);
      break;
    case 'in-cluster':
      kc.loadFromCluster();
      break;
    case 'server':
      return loadKubeConfig({ type: 'servers', servers: [{ name: 'demo', url: source.url }] });
    case 'servers':
      kc.loadFromOptions({
        clusters: source.servers.map((s) => ({ name: s.name, server: s.url, skipTLSVerify: true })),
        users: [{ name: 'anonymous' }],
        contexts: source.servers.map((s) => ({ name: s.name, cluster: s.name, user: 'anonymous' })),
        currentContext: source.servers[0]?.name ?? '',
      });
      break;
    default: {
      const never: never = source;
      throw new Error(`unknown kube source ${JSON.stringify(never)}`);
    }
  }
  return kc;
}

/** Options of {@link KubeNodes}. */
export interface KubeNodesOptions {
  /**
   * How long one Kubernetes API call may take, its credentials (a kubeconfig's `exec` plugin, an OIDC
   * refresh) and its answer body included, before it is aborted and fails with a {@link KubeApiError} of
   * reason `Timeout`. `@kubernetes/client-node` sets no timeout, so a connection the network black-holes
   * hung its batch for ever, the nodes' locks held; and so did a credential plugin that never ended.
   * @default 30000
   */
  requestTimeoutMs?: number;
}

/** The defaults of {@link KubeNodesOptions}. */
export const KUBE_NODES_DEFAULTS = Object.freeze({ requestTimeoutMs: 30_000 });

/**
 * The deadline of the {@link KubeNodes} call a request is sent for (see `KubeNodes.#timed`): the library's
 * API methods take no signal, so it reaches the HTTP library through the call's async context.
 */
const callDeadline = new AsyncLocalStorage<AbortSignal>();

/** The error of a call past its time limit. */
const timeoutError = (timeoutMs: number) =>
  new KubeApiError(0, 'Timeout', `Kubernetes API did not answer within ${timeoutMs} ms`);

/**
 * `@kubernetes/client-node`'s own HTTP library (node-fetch with the kubeconfig's agent) plus an abort
 * signal: the library passes none, and its API methods take none. The signal is the call's deadline (one
 * past it already sends nothing), else a time limit of the request's own.
 */
function timedHttpLibrary(timeoutMs: number) {
  return wrapHttpLibrary({
    async send(request: RequestContext): Promise<ResponseContext> {
      const signal = callDeadline.getStore() ?? AbortSignal.timeout(timeoutMs);
      // Credentials that came after the call was given up on: no request goes out late (a PATCH landing
      // after its node was reported failed).
      if (signal.aborted) throw timeoutError(timeoutMs);
      const timedOut = (error: unknown) => (signal.aborted ? timeoutError(timeoutMs) : error);
      try {
        const response = await fetch(request.getUrl(), {
          method: request.getHttpMethod().toString(),
          body: request.getBody() as string | undefined,
          headers: request.getHeaders(),
          agent: request.getAgent(),
          // node-fetch 2 takes any AbortSignal; its types name an older interface.
          signal: signal as never,
        });
        const headers: Record<string, string> = {};
        response.headers.forEach((value, name) => {
          headers[name] = value;
        });
        // The body is read under the same signal: a server may send headers and then stall.
        const body = await response.buffer();
        return new ResponseContext(response.status, headers, {
          text: async () => body.toString('utf8'),
          binary: async () => body,
        });
      } catch (error) {
        throw timedOut(error);
      }
    },
  });
}

function toError(error: unknown): KubeApiError {
  if (error instanceof KubeApiError) return error;
  const e = error as { code?: unknown; body?: unknown; message?: unknown; headers?: unknown };
  if (typeof e?.code === 'number') {
    let body: unknown = e.body;
    if (typeof body === 'string') {
      try {
        body = JSON.parse(body);
      } catch {
        // not JSON: keep the text
      }
    }
    const status = body as { message?: unknown; reason?: unknown } | undefined;
    const message = typeof status?.message === 'string' ? status.message : `HTTP ${e.code}`;
    const reason = typeof status?.reason === 'string' ? status.reason : 'Unknown';
    return new KubeApiError(e.code, reason, message, retryAfterOf(e.headers));
  }
  const cause = error as { code?: unknown; message?: unknown; cause?: { code?: unknown } };
  const code = typeof cause?.cause?.code === 'string' ? ` (${cause.cause.code})` : '';
  return new KubeApiError(
    0,
    'Unreachable',
    `Kubernetes API unreachable: ${String(cause?.message ?? error)}${code}`,
  );
}

/** The field manager this app's writes are recorded under (`metadata.managedFields`). */
export const FIELD_MANAGER = 'kube-node-mgr';

/** The node API this app needs, on `@kubernetes/client-node`. */
export class KubeNodes {
  readonly #api: CoreV1Api;
  readonly #apps: AppsV1Api;
  readonly #timeoutMs: number;
  /** Where the API is (for the start-up banner). */
  readonly server: string;

  constructor(config: KubeConfig, options: KubeNodesOptions = {}) {
    const { requestTimeoutMs } = { ...KUBE_NODES_DEFAULTS, ...options };
    // AbortSignal.timeout fires a delay past 2^31 - 1 ms after 1 ms: every request timed out at once.
    if (!Number.isInteger(requestTimeoutMs) || requestTimeoutMs < 1 || requestTimeoutMs > 2 ** 31 - 1)
      throw new Error(
        `KubeNodes: requestTimeoutMs must be an integer from 1 to ${2 ** 31 - 1} (got ${requestTimeoutMs})`,
      );
    const cluster = config.getCurrentCluster();
    if (cluster === null) throw new Error('KubeNodes: the kubeconfig has no current cluster');
    // As KubeConfig.makeApiClient builds it, with the timed HTTP library instead of the default one.
    const configuration = createConfiguration({
      baseServer: new ServerConfiguration(cluster.server, {}),
      authMethods: { default: config },
      httpApi: timedHttpLibrary(requestTimeoutMs),
    });
    this.#api = new CoreV1Api(configuration);
    this.#apps = new AppsV1Api(configuration);
    this.#timeoutMs = requestTimeoutMs;
    this.server = cluster.server;
  }

  /**
   * Runs one API call under the time limit, from its start: the library gets the credentials (a kubeconfig's
   * `exec` plugin, an OIDC refresh) before the HTTP request, and a plugin that never ended hung the call and
   * its batch for ever, the request's own limit not yet started. Past the limit the call fails with a
   * `Timeout` {@link KubeApiError} (a late answer is dropped), and its request, sent or not, is aborted.
   */
  async #timed<T>(call: () => Promise<T>): Promise<T> {
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(), this.#timeoutMs);
    // A stopping process does not wait for a hung call's limit.
    timer.unref();
    let onAbort: (() => void) | undefined;
    try {
      return await Promise.race([
        callDeadline.run(deadline.signal, call),
        new Promise<never>((_resolve, reject) => {
          onAbort = () => reject(timeoutError(this.#timeoutMs));
          deadline.signal.addEventListener('abort', onAbort, { once: true });
        }),
      ]);
    } finally {
      clearTimeout(timer);
      if (onAbort !== undefined) deadline.signal.removeEventListener('abort', onAbort);
    }
  }

  /** Every node (optionally filtered by a label selector), sorted by name. */
  async list(labelSelector?: string): Promise<NodeView[]> {
    try {
      const list = await this.#timed(() =>
        this.#api.listNode(labelSelector === undefined ? {} : { labelSelector }),
      );
      return list.items.map(toView).sort((a, b) => a.name.localeCompare(b.name));
    } catch (error) {
      throw toError(error);
    }
  }

  /** One node. */
  async get(name: string): Promise<NodeView> {
    try {
      return toView(await this.#timed(() => this.#api.readNode({ name })));
    } catch (error) {
      throw toError(error);
    }
  }

  /** The pods scheduled on a node, in every namespace. */
  async podsOn(node: string): Promise<PodRef[]> {
    try {
      const list = await this.#timed(() =>
        this.#api.listPodForAllNamespaces({ fieldSelector: `spec.nodeName=${node}` }),
      );
      return list.items.map(toPodRef);
    } catch (error) {
      throw toError(error);
    }
  }

  /** One pod, or `null` once it is gone. */
  async pod(namespace: string, name: string): Promise<PodRef | null> {
    try {
      return toPodRef(await this.#timed(() => this.#api.readNamespacedPod({ namespace, name })));
    } catch (error) {
      const e = toError(error);
      if (e.status === 404) return null;
      throw e;
    }
  }

  /**
   * Whether a DaemonSet exists: a drain leaves a DaemonSet's pods in place only while it does (its pods
   * left by a deleted one, as `kubectl drain` sees them, are recreated by nothing). `false` on 404.
   */
  async daemonSetExists(namespace: string, name: string): Promise<boolean> {
    try {
      await this.#timed(() => this.#apps.readNamespacedDaemonSet({ namespace, name }));
      return true;
    } catch (error) {
      const e = toError(error);
      if (e.status === 404) return false;
      throw e;
    }
  }

  /**
   * Asks the Eviction API to evict a pod; a 429 means a PodDisruptionBudget refuses it for now. `uid` (the
   * pod as listed) goes as `deleteOptions.preconditions.uid`: a pod recreated under the same name since (a
   * StatefulSet's) is then refused with 409 Conflict instead of evicted. No resourceVersion precondition:
   * a pod's status changes (readiness, the eviction's own DisruptionTarget condition) would make it 409 too.
   */
  async evict(namespace: string, name: string, uid: string): Promise<void> {
    try {
      await this.#timed(() =>
        this.#api.createNamespacedPodEviction({
          namespace,
          name,
          body: {
            apiVersion: 'policy/v1',
            kind: 'Eviction',
            metadata: { name, namespace },
            ...(uid === '' ? {} : { deleteOptions: { preconditions: { uid } } }),
          },
        }),
      );
    } catch (error) {
      throw toError(error);
    }
  }

  /** Applies a JSON merge patch and answers with the node as the API left it. */
  async mergePatch(name: string, patch: Record<string, unknown>): Promise<NodeView> {
    try {
      const node = await this.#timed(() =>
        this.#api.patchNode(
          { name, body: patch, fieldManager: FIELD_MANAGER },
          setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
        ),
      );
      return toView(node);
    } catch (error) {
      throw toError(error);
    }
  }
}

/** A pod on a node, as a drain sees it. */
export interface PodRef {
  namespace: string;
  name: string;
  uid: string;
  /** Kind of the controlling owner (`DaemonSet`, `ReplicaSet`, …), or `null`. */
  controller: string | null;
  /** Name of the controlling owner (in the pod's namespace); `null` or absent without one. */
  controllerName?: string | null;
  /** A static pod's mirror: the kubelet owns it, eviction does not apply. */
  mirror: boolean;
  terminating: boolean;
  /** Succeeded or Failed: its containers are done, so evicting it loses nothing. */
  finished: boolean;
  /** Has an `emptyDir` volume, whose data goes with the pod. */
  emptyDir: boolean;
}

/**
 * Whether a pod (spec) has an `emptyDir` volume: a drain refuses its node, as `kubectl drain` does without
 * `--delete-emptydir-data`, since the eviction deletes the data.
 */
export function hasEmptyDir(spec: V1PodSpec | undefined): boolean {
  return (spec?.volumes ?? []).some((v) => v.emptyDir !== undefined);
}

function toPodRef(pod: V1Pod): PodRef {
  return {
    namespace: pod.metadata?.namespace ?? 'default',
    name: pod.metadata?.name ?? '',
    uid: pod.metadata?.uid ?? '',
    controller: pod.metadata?.ownerReferences?.find((o) => o.controller)?.kind ?? null,
    controllerName: pod.metadata?.ownerReferences?.find((o) => o.controller)?.name ?? null,
    mirror: pod.metadata?.annotations?.['kubernetes.io/config.mirror'] !== undefined,
    terminating: pod.metadata?.deletionTimestamp !== undefined,
    finished: pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed',
    emptyDir: hasEmptyDir(pod.spec),
  };
}

function toView(node: V1Node): NodeView {
  const labels = { ...(node.metadata?.labels ?? {}) };
  return {
    name: node.metadata?.name ?? '',
    resourceVersion: node.metadata?.resourceVersion ?? '',
    labels,
    taints: (node.spec?.taints ?? []).map((t) => ({
      key: t.key,
      ...(t.value === undefined ? {} : { value: t.value }),
      effect: t.effect,
      ...(t.timeAdded === undefined
        ? {}
        : { timeAdded: new Date(t.timeAdded).toISOString().replace(/\.\d{3}Z$/, 'Z') }),
    })),
    unschedulable: node.spec?.unschedulable === true,
    roles: Object.keys(labels)
      .filter((k) => k.startsWith('node-role.kubernetes.io/'))
      .map((k) => k.slice('node-role.kubernetes.io/'.length)),
    zone: labels['topology.kubernetes.io/zone'] ?? null,
    instanceType: labels['node.kubernetes.io/instance-type'] ?? null,
    ready: (node.status?.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True'),
    kubeletVersion: node.status?.nodeInfo?.kubeletVersion ?? null,
    cordonManager:
      node.spec?.unschedulable === true
        ? (node.metadata?.managedFields?.find((f) => {
            const spec = (f.fieldsV1 as Record<string, unknown> | undefined)?.['f:spec'];
            return typeof spec === 'object' && spec !== null && 'f:unschedulable' in spec;
          })?.manager ?? null)
        : null,
  };
}
