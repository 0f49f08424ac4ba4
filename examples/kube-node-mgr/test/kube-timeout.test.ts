/**
 * An API server that accepts the connection and never answers (a black-holed connection, a stuck apiserver):
 * `@kubernetes/client-node` sets no timeout, so such a request hung its batch for ever ("processing …"),
 * the node locks held. Every request now has a time limit, and a node's read and patch are repeated after
 * it up to `maxAttempts` times before the node fails with the reason.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { KubeApiError, KubeNodes, loadKubeConfig } from '../src/server/kube-nodes.js';
import { applyToNode } from '../src/server/node-worker.js';

let server: http.Server | undefined;
afterEach(async () => {
  server?.closeAllConnections();
  await new Promise<void>((resolve) => (server === undefined ? resolve() : server.close(() => resolve())));
  server = undefined;
});

/**
 * An API server answering the first `silent` requests never (`headersOnly`: sends the headers, then
 * stalls the body), then the node as asked.
 */
async function apiServer(silent: number, headersOnly = false) {
  const requests: string[] = [];
  server = http.createServer((req, res) => {
    requests.push(req.method ?? '');
    req.resume();
    if (requests.length <= silent) {
      if (headersOnly) res.writeHead(200, { 'content-type': 'application/json' }).write('{"kind":');
      return; // held open, unanswered
    }
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          apiVersion: 'v1',
          kind: 'Node',
          metadata: { name: 'n1', resourceVersion: req.method === 'PATCH' ? '2' : '1', labels: {} },
          spec: req.method === 'PATCH' ? { unschedulable: true } : {},
        }),
      );
    });
  });
  await new Promise<void>((resolve) => server?.listen(0, '127.0.0.1', () => resolve()));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url, requests };
}

describe('a Kubernetes API that does not answer', () => {
  it('fails a request with a Timeout error once its time limit passes', async () => {
    const { url } = await apiServer(1);
    const nodes = new KubeNodes(loadKubeConfig({ type: 'server', url }), { requestTimeoutMs: 200 });
    const error = await nodes.get('n1').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KubeApiError);
    expect(error).toMatchObject({ status: 0, reason: 'Timeout' });
    expect((error as Error).message).toBe('Kubernetes API did not answer within 200 ms');
  });

  it('also when the headers came and the body stalls', async () => {
    const { url } = await apiServer(1, true);
    const nodes = new KubeNodes(loadKubeConfig({ type: 'server', url }), { requestTimeoutMs: 200 });
    await expect(nodes.get('n1')).rejects.toMatchObject({ status: 0, reason: 'Timeout' });
  });

  it('repeats a node read and patch that timed out, then fails the node with the reason', async () => {
    const api = await apiServer(1);
    const nodes = new KubeNodes(loadKubeConfig({ type: 'server', url: api.url }), { requestTimeoutMs: 200 });
    const signal = new AbortController().signal;
    const result = await applyToNode(nodes, 'n1', { type: 'cordon' }, { maxAttempts: 3, signal });
    expect(result.outcome).toBe('changed');
    expect(api.requests).toEqual(['GET', 'GET', 'PATCH']);

    const dead = await apiServer(Number.POSITIVE_INFINITY);
    const stuck = new KubeNodes(loadKubeConfig({ type: 'server', url: dead.url }), { requestTimeoutMs: 100 });
    await expect(applyToNode(stuck, 'n1', { type: 'cordon' }, { maxAttempts: 3, signal })).rejects.toThrow(
      'Kubernetes API did not answer within 100 ms',
    );
    expect(dead.requests).toEqual(['GET', 'GET', 'GET']);
  });

  it('refuses a time limit that is not a positive integer', () => {
    const kc = loadKubeConfig({ type: 'server', url: 'http://127.0.0.1:1' });
    expect(() => new KubeNodes(kc, { requestTimeoutMs: 0 })).toThrow(/requestTimeoutMs/);
  });
});

/**
 * A PATCH the API applied but answered too late (or never): the node failed with the timeout though it had
 * the change. Now it is read back: changed → succeeded; unchanged → failed; unreadable → "unknown: verify".
 */
describe('a node patch that timed out', () => {
  /** The node `n1`; PATCHes applied (`land`) or not, then never answered; GETs answered until `readable` is false. */
  async function slowPatchServer(land: boolean) {
    const state = { unschedulable: false, resourceVersion: 1, readable: true };
    const requests: string[] = [];
    server = http.createServer((req, res) => {
      requests.push(req.method ?? '');
      req.resume();
      req.on('end', () => {
        if (req.method === 'PATCH') {
          if (land) {
            state.unschedulable = true;
            state.resourceVersion++;
          }
          return; // held open, unanswered
        }
        if (!state.readable) return;
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({
            apiVersion: 'v1',
            kind: 'Node',
            metadata: { name: 'n1', resourceVersion: String(state.resourceVersion), labels: {} },
            spec: state.unschedulable ? { unschedulable: true } : {},
          }),
        );
      });
    });
    await new Promise<void>((resolve) => server?.listen(0, '127.0.0.1', () => resolve()));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const nodes = new KubeNodes(loadKubeConfig({ type: 'server', url }), { requestTimeoutMs: 150 });
    return { nodes, requests, state };
  }
  const signal = new AbortController().signal;

  it('that landed succeeds the node, read back after its last attempt', async () => {
    const { nodes, requests } = await slowPatchServer(true);
    const result = await applyToNode(nodes, 'n1', { type: 'cordon' }, { maxAttempts: 1, signal });
    expect(result).toMatchObject({ outcome: 'changed', resourceVersion: '2' });
    expect(requests).toEqual(['GET', 'PATCH', 'GET']);
  });

  it('that landed counts as changed (not unchanged) when the next attempt finds it done', async () => {
    const { nodes, requests } = await slowPatchServer(true);
    const result = await applyToNode(nodes, 'n1', { type: 'cordon' }, { maxAttempts: 3, signal });
    expect(result.outcome).toBe('changed');
    expect(requests).toEqual(['GET', 'PATCH', 'GET']);
  });

  it('that did not land fails the node with the timeout', async () => {
    const { nodes, requests } = await slowPatchServer(false);
    await expect(applyToNode(nodes, 'n1', { type: 'cordon' }, { maxAttempts: 2, signal })).rejects.toThrow(
      /^Kubernetes API did not answer within 150 ms$/,
    );
    expect(requests).toEqual(['GET', 'PATCH', 'GET', 'PATCH', 'GET']);
  });

  it('fails the node as unknown, to verify, when it cannot be read back', async () => {
    const { nodes, state } = await slowPatchServer(true);
    // The PATCH lands, then the API stops answering reads as well.
    const failure = applyToNode(nodes, 'n1', { type: 'cordon' }, { maxAttempts: 1, signal });
    await new Promise((resolve) => setTimeout(resolve, 50));
    state.readable = false;
    await expect(failure).rejects.toThrow(
      /^unknown: a change sent to n1 got no answer in time and may have landed.*verify n1 before retrying/,
    );
  });
});

/**
 * A review on 7 December 2026: the time limit was the HTTP request's only, while `@kubernetes/client-node`
 * gets the credentials before it (a kubeconfig's `exec` plugin: `aws eks get-token`, `kubelogin`, the GKE
 * plugin; an OIDC refresh). A plugin that never ends (waiting for a login, a network black-holed) hung the
 * call, and its batch, for ever. The limit now covers the whole call, and no request is sent after it.
 */
describe('credentials that never come (an exec plugin that hangs)', () => {
  it('fail the call with a Timeout error once the time limit passes, sending nothing', async () => {
    const api = await apiServer(0);
    const credential = {
      apiVersion: 'client.authentication.k8s.io/v1beta1',
      kind: 'ExecCredential',
      status: { token: 'late-token' },
    };
    const kc = loadKubeConfig({ type: 'server', url: api.url });
    kc.loadFromOptions({
      clusters: kc.getClusters(),
      contexts: kc.getContexts().map((c) => ({ ...c, user: 'plugin' })),
      currentContext: kc.getCurrentContext(),
      users: [
        {
          name: 'plugin',
          exec: {
            apiVersion: 'client.authentication.k8s.io/v1beta1',
            // Gives its token after 1 s, long past the limit (and leaves no process behind).
            command: process.execPath,
            args: [
              '-e',
              `setTimeout(() => console.log(${JSON.stringify(JSON.stringify(credential))}), 1000)`,
            ],
          },
        },
      ],
    });
    const nodes = new KubeNodes(kc, { requestTimeoutMs: 200 });
    const started = Date.now();
    const error = await nodes.get('n1').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KubeApiError);
    expect({ status: (error as KubeApiError).status, reason: (error as KubeApiError).reason }).toEqual({
      status: 0,
      reason: 'Timeout',
    });
    expect(Date.now() - started).toBeLessThan(1500);
    // Once the plugin has given its token, the call given up on sends no request late.
    await new Promise((r) => setTimeout(r, 1500));
    expect(api.requests).toEqual([]);
    // The same credentials in time work (the plugin's token is cached by the library).
    expect((await new KubeNodes(kc, { requestTimeoutMs: 2000 }).get('n1')).name).toBe('n1');
    expect(api.requests).toEqual(['GET']);
  }, 10_000);
});
