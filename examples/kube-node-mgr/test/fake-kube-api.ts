/**
 * A fake Kubernetes API server for the drain and retry tests: plain `node:http` on port 0, answering
 * with the handler a test gives it, and the bodies those tests share (a cordoned node n1, a pod on it, a
 * pod list, a `Status`). The real `KubeNodes` client talks to it, so the tests check what goes over the
 * wire and not a mock of the client.
 *
 * @module
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach } from 'vitest';
import { KubeNodes, loadKubeConfig } from '../src/server/kube-nodes.js';

/** One request to the fake API server, its body read. */
export interface FakeKubeRequest {
  readonly method: string;
  /** The path of the request URL, without its query. */
  readonly path: string;
  /** Answers with `body` as JSON, with `headers` besides the content type. */
  send(code: number, body: unknown, headers?: Record<string, string>): void;
}

/** A `KubeNodes` client of a running fake API server. */
export interface FakeKubeApi {
  nodes: KubeNodes;
}

/**
 * Call once at the top of a test file: every server {@link start}ed is closed after each test (its
 * connections cut, so a keep-alive client does not hold the close up), or earlier with `close()`.
 */
export function useKubeApi(): {
  start(handle: (req: FakeKubeRequest) => void): Promise<FakeKubeApi>;
  close(): Promise<void>;
} {
  const servers: http.Server[] = [];
  const close = async () => {
    for (const server of servers.splice(0)) {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  };
  afterEach(close);
  return {
    async start(handle) {
      const server = http.createServer((req, res) => {
        req.resume();
        req.on('end', () => {
          handle({
            method: req.method ?? 'GET',
            path: new URL(req.url ?? '/', 'http://x').pathname,
            send: (code, body, headers = {}) => {
              res.writeHead(code, { 'content-type': 'application/json', ...headers });
              res.end(JSON.stringify(body));
            },
          });
        });
      });
      servers.push(server);
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      return { nodes: new KubeNodes(loadKubeConfig({ type: 'server', url })) };
    },
    close,
  };
}

/** Node n1, already cordoned: the state a drain starts from. */
export const cordonedN1 = {
  apiVersion: 'v1',
  kind: 'Node',
  metadata: { name: 'n1', resourceVersion: '1' },
  spec: { unschedulable: true },
};

/** A pod on node n1 with one controller owner (by default shop/`name` of ReplicaSet web, Running). */
export function podOnN1(
  name: string,
  opts: {
    namespace?: string;
    uid?: string;
    owner?: { kind: string; name: string; uid: string };
    volumes?: unknown[];
    phase?: string;
  } = {},
) {
  const {
    kind,
    name: ownerName,
    uid: ownerUid,
  } = opts.owner ?? { kind: 'ReplicaSet', name: 'web', uid: 'rs' };
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name,
      namespace: opts.namespace ?? 'shop',
      uid: opts.uid ?? name,
      ownerReferences: [{ apiVersion: 'apps/v1', kind, name: ownerName, uid: ownerUid, controller: true }],
    },
    spec: opts.volumes === undefined ? { nodeName: 'n1' } : { nodeName: 'n1', volumes: opts.volumes },
    status: { phase: opts.phase ?? 'Running' },
  };
}

/** The answer to a pod list. */
export const podList = (items: unknown[]) => ({ kind: 'PodList', apiVersion: 'v1', metadata: {}, items });

/** A failure `Status`, as the API server answers an error. */
export const failure = (code: number, reason: string, message: string) => ({
  kind: 'Status',
  apiVersion: 'v1',
  status: 'Failure',
  reason,
  code,
  message,
});

/** The `Status` of an accepted eviction. */
export const evictionAccepted = { kind: 'Status', apiVersion: 'v1', status: 'Success', code: 201 };
