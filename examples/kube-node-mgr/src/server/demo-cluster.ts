/**
 * The demo cluster: an in-process Kubernetes API server for nodes, pods and evictions. Its nodes are in
 * `demo-nodes.ts`, the API's wire rules (Status errors, patches, selectors, tables, discovery) in
 * `demo-api.ts`, its pods and budgets in `demo-workloads.ts`.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { isDeepStrictEqual } from 'node:util';
import {
  badRequest,
  discovery,
  HttpStatusError,
  isRecord,
  jsonMergePatch,
  labelMatcher,
  notFound,
  readBody,
  status,
  strategicMergePatch,
  table,
  validateNode,
  wantsTable,
} from './demo-api.js';
import { type DemoNode, initialNodes, seededRandom } from './demo-nodes.js';
import { type DemoPod, DemoWorkloads } from './demo-workloads.js';
import { hostRule, isLoopback, LOOPBACK_HOSTS } from './host-rule.js';

export { jsonMergePatch, strategicMergePatch } from './demo-api.js';
export type { DemoNode, Taint } from './demo-nodes.js';

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

/**
 * An in-process HTTP server that speaks the Kubernetes API for nodes, as the real one does for the calls
 * this app and `kubectl get nodes` / `kubectl taint` / `kubectl cordon` / `kubectl label` make: list (with
 * `labelSelector`), get, JSON merge patch and strategic merge patch (with the optimistic
 * `metadata.resourceVersion` check: 409 Conflict when stale), 404 for unknown nodes, `Status` objects for
 * errors, and the discovery documents kubectl reads first. No authentication: it binds to 127.0.0.1, and
 * there answers only to the loopback names (as the app, and `kubectl proxy`'s `--accept-hosts`).
 */
export class DemoCluster {
  readonly #nodes = new Map<string, DemoNode>();
  readonly #options: Required<Omit<DemoClusterOptions, 'onRequest'>> & Pick<DemoClusterOptions, 'onRequest'>;
  readonly #random: () => number;
  #resourceVersion = 1000;
  #server: http.Server | undefined;
  readonly #workloads: DemoWorkloads;
  /**
   * The latency waits of the calls in flight (timer → its resolve), ended by {@link close}: left running, each
   * held the process up for `latencyMs` after close, and its call then went on against the closed cluster.
   */
  readonly #delays = new Map<ReturnType<typeof setTimeout>, () => void>();
  /** Closed and not listening again: a call still in flight ends unanswered rather than being applied. */
  #closed = false;

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

  /**
   * Starts listening on 127.0.0.1 (port 0: any free port). On loopback a `Host` other than the loopback names
   * gets 403 Forbidden: without credentials, the API took a DNS-rebinding page's requests (its name made to
   * resolve to 127.0.0.1), which listed, patched, deleted and drained the nodes.
   */
  async listen(port = 0, host = '127.0.0.1'): Promise<string> {
    const hostAllowed = hostRule(isLoopback(host) ? LOOPBACK_HOSTS : undefined);
    const server = http.createServer((req, res) => {
      if (hostAllowed(req)) {
        void this.#handle(req, res);
        return;
      }
      const text = JSON.stringify(
        status({
          code: 403,
          reason: 'Forbidden',
          message: 'this API server answers only to localhost, 127.0.0.1 and [::1], against DNS rebinding',
        }),
      );
      res.writeHead(403, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.#server = server;
    this.#closed = false;
    return this.url;
  }

  /** Stops listening and drops open connections. */
  async close(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    this.#closed = true;
    for (const [timer, resolve] of this.#delays) {
      clearTimeout(timer);
      resolve();
    }
    this.#delays.clear();
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
      if (this.#options.latencyMs > 0 && !this.#closed) await this.#delay(this.#options.latencyMs);
      // Closed meanwhile (its connection is gone): not applied to the closed cluster, whose workloads would
      // otherwise start timers again (an eviction's pod termination) after close() stopped them.
      if (this.#closed) {
        res.destroy();
        return;
      }
      const doc = discovery(path);
      if (doc !== undefined && method === 'GET') return send(200, doc);
      // An eviction in JSON only, as the API server reads a body (415 otherwise): any web page may send a POST
      // of text/plain, or without a body, to this address unasked (no CORS preflight), and the demo took it as
      // an eviction of the pod it named (their names are predictable: web-7d9f8-xxxx1).
      const mediaType = String(req.headers['content-type'] ?? '')
        .split(';')[0]
        ?.trim();
      if (method === 'POST' && path.endsWith('/eviction') && mediaType !== 'application/json')
        throw new HttpStatusError({
          code: 415,
          reason: 'UnsupportedMediaType',
          message:
            'the body of the request was in an unknown format - accepted media types include: application/json',
        });
      const workload = this.#workloads.handle(
        method,
        path,
        url.searchParams,
        (code, reason, message, details) => {
          throw new HttpStatusError({ code, reason, message, ...(details === undefined ? {} : { details }) });
        },
        body,
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
            fieldManagerOf(url.searchParams.get('fieldManager'), req.headers['user-agent']),
          ),
        );
      }
      // `kubectl delete node` (a node scaled down, replaced): what a rerun of an older batch meets. Its pods
      // are left as they are (a real cluster's pod garbage collector deletes them later).
      if (method === 'DELETE') {
        if (node === undefined) throw notFound(nodeName);
        this.#nodes.delete(nodeName);
        this.#resourceVersion++;
        return send(200, node); // as the API server answers a delete: the object deleted
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

  /** Waits `ms`, or until {@link close}. */
  #delay(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#delays.delete(timer);
        resolve();
      }, ms);
      this.#delays.set(timer, resolve);
    });
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

  #patch(node: DemoNode, contentType: string, body: string, dryRun: boolean, manager: string): DemoNode {
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
    // managedFields, for spec.unschedulable only: the manager that set it owns it until it is removed.
    const owner = node.metadata.managedFields;
    if (next.spec.unschedulable !== true) delete next.metadata.managedFields;
    else if (node.spec.unschedulable === true) {
      if (owner === undefined) delete next.metadata.managedFields;
      else next.metadata.managedFields = owner;
    } else {
      next.metadata.managedFields = [
        {
          manager,
          operation: 'Update',
          apiVersion: 'v1',
          time: new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'),
          fieldsType: 'FieldsV1',
          fieldsV1: { 'f:spec': { 'f:unschedulable': {} } },
        },
      ];
    }
    next.metadata.labels ??= {};
    next.metadata.annotations ??= {};
    // A patch that changes nothing is not written, as the API server skips such an update: the node keeps
    // its resourceVersion (bumped, a client holding it got a needless 409 on its next conditional write).
    next.metadata.resourceVersion = node.metadata.resourceVersion;
    if (isDeepStrictEqual(next, node)) return structuredClone(node);
    next.metadata.resourceVersion = String(++this.#resourceVersion);
    this.#nodes.set(name, next);
    return structuredClone(next);
  }
}

/**
 * The field manager of a write, as the API server names it: the `fieldManager` parameter, else the
 * User-Agent up to its first `/` (kubectl's `kubectl/v1.30.0 (linux/amd64) …` is `kubectl`).
 */
function fieldManagerOf(param: string | null, userAgent: string | undefined): string {
  if (param !== null && param !== '') return param;
  return (userAgent ?? 'unknown').split('/')[0]?.slice(0, 128) || 'unknown';
}
