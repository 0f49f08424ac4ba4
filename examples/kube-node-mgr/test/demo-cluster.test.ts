// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DemoCluster } from '../src/server/demo-cluster.js';

let cluster: DemoCluster;
let base: string;
beforeEach(async () => {
  cluster = new DemoCluster();
  base = await cluster.listen(0);
});
afterEach(async () => {
  await cluster.close();
});

const patch = async (name: string, type: string, body: unknown) => {
  const res = await fetch(`${base}/api/v1/nodes/${name}`, {
    method: 'PATCH',
    headers: { 'content-type': type },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as any };
};
const MERGE = 'application/merge-patch+json';
const STRATEGIC = 'application/strategic-merge-patch+json';

describe('demo cluster', () => {
  // What a web page may send any address without a CORS preflight: a POST of text/plain, or without a body.
  // Before the fix the demo evicted the pod it named (201) for either, from any site the operator opened.
  it('refuses an eviction that is not JSON with 415, as the API server does: no cross-site eviction', async () => {
    const pod = cluster.pods('worker-1').find((p) => p.metadata.labels.app === 'reports');
    const url = `${base}/api/v1/namespaces/batch/pods/${pod?.metadata.name}/eviction`;
    const eviction = JSON.stringify({
      apiVersion: 'policy/v1',
      kind: 'Eviction',
      metadata: { name: pod?.metadata.name },
    });
    const plain = await fetch(url, { method: 'POST', body: eviction }); // text/plain;charset=UTF-8
    expect(plain.status).toBe(415);
    expect(await plain.json()).toMatchObject({ kind: 'Status', reason: 'UnsupportedMediaType', code: 415 });
    expect((await fetch(url, { method: 'POST' })).status).toBe(415);
    const leaving = () =>
      cluster.pods('worker-1').find((p) => p.metadata.name === pod?.metadata.name)?.metadata;
    expect(leaving()).toBeDefined();
    expect(leaving()).not.toHaveProperty('deletionTimestamp');
    const json = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json; charset=utf-8' },
      body: eviction,
    });
    expect(json.status).toBe(201);
  });

  // `kubectl delete node`, for trying what the app does with a node deleted since its batch (a rerun).
  it('deletes a node: gone from the list and its reads; a second delete is 404', async () => {
    const del = () => fetch(`${base}/api/v1/nodes/worker-3`, { method: 'DELETE' });
    const first = await del();
    expect(first.status).toBe(200);
    expect(((await first.json()) as any).metadata.name).toBe('worker-3');
    const list = (await (await fetch(`${base}/api/v1/nodes`)).json()) as any;
    expect(list.items.map((n: any) => n.metadata.name)).not.toContain('worker-3');
    expect((await fetch(`${base}/api/v1/nodes/worker-3`)).status).toBe(404);
    expect((await del()).status).toBe(404);
  });

  it('lists at least 12 nodes with roles, zones, instance types and taints', async () => {
    const list = (await (await fetch(`${base}/api/v1/nodes`)).json()) as any;
    expect(list.kind).toBe('NodeList');
    expect(list.items.length).toBeGreaterThanOrEqual(12);
    const labels = list.items.map((n: any) => n.metadata.labels);
    expect(new Set(labels.map((l: any) => l['topology.kubernetes.io/zone'])).size).toBe(3);
    expect(labels.some((l: any) => 'node-role.kubernetes.io/control-plane' in l)).toBe(true);
    expect(list.items.filter((n: any) => n.spec.taints?.length).length).toBeGreaterThanOrEqual(5);
  });

  it("selects by label existence on the node's own labels, not on names every object has (constructor, toString)", async () => {
    const names = async (selector: string) =>
      (
        (await (
          await fetch(`${base}/api/v1/nodes?labelSelector=${encodeURIComponent(selector)}`)
        ).json()) as any
      ).items.map((n: any) => n.metadata.name);
    const all = await names('');
    // No node has these labels: the real API lists none for `k` and every node for `!k`.
    expect(await names('constructor')).toEqual([]);
    expect(await names('toString')).toEqual([]);
    expect(await names('!constructor')).toEqual(all);
  });

  it('selects pods by their own labels too: `constructor` selects none, `app` the labelled ones', async () => {
    const pods = async (selector: string) =>
      (
        (await (
          await fetch(`${base}/api/v1/pods?labelSelector=${encodeURIComponent(selector)}`)
        ).json()) as any
      ).items.length;
    expect(await pods('app')).toBeGreaterThan(0);
    expect(await pods('constructor')).toBe(0);
  });

  it('answers 404 with a Status for an unknown node', async () => {
    const res = await fetch(`${base}/api/v1/nodes/nope`);
    expect(res.status).toBe(404);
    expect(await res.json()).toMatchObject({
      kind: 'Status',
      status: 'Failure',
      reason: 'NotFound',
      code: 404,
    });
    expect((await patch('nope', MERGE, { metadata: { labels: { a: 'b' } } })).status).toBe(404);
  });

  it('bumps resourceVersion on every change and refuses a stale one with 409', async () => {
    const before = cluster.node('worker-1')?.metadata.resourceVersion ?? '';
    const first = await patch('worker-1', MERGE, {
      metadata: { resourceVersion: before, labels: { a: '1' } },
    });
    expect(first.status).toBe(200);
    expect(Number(first.body.metadata.resourceVersion)).toBeGreaterThan(Number(before));
    const stale = await patch('worker-1', MERGE, {
      metadata: { resourceVersion: before, labels: { a: '2' } },
    });
    expect(stale.status).toBe(409);
    expect(stale.body).toMatchObject({ kind: 'Status', reason: 'Conflict', code: 409 });
    expect(cluster.node('worker-1')?.metadata.labels.a).toBe('1');
    // Without a resourceVersion, the patch applies unconditionally (as the API does).
    expect((await patch('worker-1', MERGE, { metadata: { labels: { a: '3' } } })).status).toBe(200);
  });

  // The API server does not write an update that changes nothing: the resourceVersion stays, and a client
  // holding it can still write with it. The demo cluster bumped it on every PATCH.
  it('keeps resourceVersion on a PATCH that changes nothing, and still accepts the version held', async () => {
    const node = cluster.node('worker-1');
    const version = node?.metadata.resourceVersion ?? '';
    const labels = node?.metadata.labels ?? {};
    const [key = '', value = ''] = Object.entries(labels)[0] ?? [];
    const same = await patch('worker-1', MERGE, {
      metadata: { resourceVersion: version, labels: { [key]: value } },
    });
    expect(same.status).toBe(200);
    expect(same.body.metadata.resourceVersion).toBe(version);
    const strategic = await patch('worker-1', STRATEGIC, { spec: { taints: node?.spec.taints ?? null } });
    expect(strategic.body.metadata.resourceVersion).toBe(version);
    expect(cluster.node('worker-1')).toEqual(node);
    const changed = await patch('worker-1', MERGE, {
      metadata: { resourceVersion: version, labels: { a: '1' } },
    });
    expect(changed.status).toBe(200);
    expect(changed.body.metadata.resourceVersion).not.toBe(version);
  });

  it('refuses a set requirement with no values (`in ()`) with 400 BadRequest, as the API server does', async () => {
    for (const selector of ['pool in ()', 'pool notin ( )']) {
      const res = await fetch(`${base}/api/v1/nodes?labelSelector=${encodeURIComponent(selector)}`);
      expect(res.status).toBe(400);
      const body = (await res.json()) as any;
      expect(body).toMatchObject({ kind: 'Status', reason: 'BadRequest', code: 400 });
      expect(body.message).toMatch(/values set can't be empty/);
    }
  });

  it('merge patch replaces the taints list as a whole; null removes fields', async () => {
    await patch('gpu-1', MERGE, { spec: { taints: [{ key: 'x', effect: 'NoSchedule' }] } });
    expect(cluster.node('gpu-1')?.spec.taints).toEqual([{ key: 'x', effect: 'NoSchedule' }]);
    await patch('gpu-1', MERGE, { spec: { taints: null }, metadata: { labels: { pool: null } } });
    expect(cluster.node('gpu-1')?.spec.taints).toBeUndefined();
    expect(cluster.node('gpu-1')?.metadata.labels).not.toHaveProperty('pool');
  });

  it('strategic merge patch replaces spec.taints as a whole (atomic list), merges maps', async () => {
    // What `kubectl taint nodes gpu-1 x=v:NoExecute` sends: the complete new list.
    await patch('gpu-1', STRATEGIC, {
      spec: {
        taints: [
          { key: 'nvidia.com/gpu', value: 'present', effect: 'NoSchedule' },
          { key: 'x', value: 'v', effect: 'NoExecute' },
        ],
      },
    });
    expect(cluster.node('gpu-1')?.spec.taints).toEqual([
      { key: 'nvidia.com/gpu', value: 'present', effect: 'NoSchedule' },
      { key: 'x', value: 'v', effect: 'NoExecute' },
    ]);
    await patch('gpu-1', STRATEGIC, {
      spec: { taints: [{ key: 'x', value: 'v', effect: 'NoExecute' }] },
      metadata: { labels: { team: 'ml' } },
    });
    expect(cluster.node('gpu-1')?.spec.taints).toEqual([{ key: 'x', value: 'v', effect: 'NoExecute' }]);
    expect(cluster.node('gpu-1')?.metadata.labels).toMatchObject({ team: 'ml', pool: 'gpu' });
    // `kubectl taint … x-` removing the last taint sends an empty list; the field goes away.
    await patch('gpu-1', STRATEGIC, { spec: { taints: [] }, metadata: { labels: { team: null } } });
    expect(cluster.node('gpu-1')?.spec.taints).toBeUndefined();
    expect(cluster.node('gpu-1')?.metadata.labels).not.toHaveProperty('team');
    // Directives: $patch replace on a map, $setElementOrder ignored.
    await patch('gpu-1', STRATEGIC, {
      metadata: { annotations: { $patch: 'replace', only: 'this' } },
      spec: { '$setElementOrder/taints': [] },
    });
    expect(cluster.node('gpu-1')?.metadata.annotations).toEqual({ only: 'this' });
  });

  it('validates taints and media types like the API server', async () => {
    expect(
      (await patch('worker-1', MERGE, { spec: { taints: [{ key: 'x', effect: 'Nope' }] } })).body,
    ).toMatchObject({ reason: 'Invalid', code: 422 });
    const dup = await patch('worker-1', MERGE, {
      spec: {
        taints: [
          { key: 'x', effect: 'NoSchedule' },
          { key: 'x', effect: 'NoSchedule' },
        ],
      },
    });
    expect(dup.status).toBe(422);
    expect((await patch('worker-1', 'application/json', {})).status).toBe(415);
  });

  // The API server validates label keys and values and taint keys and values (a qualified name; a label
  // value). The demo cluster stored any string, so a client tested against it (curl, a script, this app
  // with a validation bug) saw 200 where a real cluster answers 422 Invalid.
  it.each([
    [
      'a label key that is not a qualified name',
      { metadata: { labels: { 'bad key': 'v' } } },
      'metadata.labels',
    ],
    [
      'a label key with an upper-case prefix',
      { metadata: { labels: { 'Example.com/k': 'v' } } },
      'metadata.labels',
    ],
    ['a label value with a space', { metadata: { labels: { team: 'a b' } } }, 'metadata.labels'],
    [
      'a label value over 63 characters',
      { metadata: { labels: { team: 'v'.repeat(64) } } },
      'metadata.labels',
    ],
    [
      'a taint key that is not a qualified name',
      { spec: { taints: [{ key: 'a/b/c', effect: 'NoSchedule' }] } },
      'spec.taints[0].key',
    ],
    [
      'a taint value ending in a dash',
      { spec: { taints: [{ key: 'k', value: 'v-', effect: 'NoSchedule' }] } },
      'spec.taints[0].value',
    ],
  ])('refuses %s with 422 Invalid, as the API server does', async (_what, body, field) => {
    const before = cluster.node('worker-1');
    const res = await patch('worker-1', MERGE, body);
    expect(res.status).toBe(422);
    expect(res.body).toMatchObject({ kind: 'Status', reason: 'Invalid', code: 422 });
    expect(res.body.message).toContain(field);
    expect(cluster.node('worker-1')).toEqual(before);
  });

  it('injects failures deterministically from the seed', async () => {
    const run = async (seed: number) => {
      const c = new DemoCluster({ failureRate: 0.5, seed });
      const url = await c.listen(0);
      const codes: number[] = [];
      for (let i = 0; i < 20; i++) {
        const res = await fetch(`${url}/api/v1/nodes/worker-1`, {
          method: 'PATCH',
          headers: { 'content-type': MERGE },
          body: JSON.stringify({ metadata: { labels: { i: String(i) } } }),
        });
        codes.push(res.status);
      }
      await c.close();
      return codes;
    };
    const a = await run(3);
    expect(a).toEqual(await run(3));
    expect(a).toContain(500);
    expect(a).toContain(200);
  });

  it('serves the discovery documents kubectl reads', async () => {
    expect(((await (await fetch(`${base}/version`)).json()) as any).gitVersion).toMatch(/^v1\./);
    expect(((await (await fetch(`${base}/api`)).json()) as any).versions).toEqual(['v1']);
    expect(((await (await fetch(`${base}/apis`)).json()) as any).kind).toBe('APIGroupList');
    const resources = ((await (await fetch(`${base}/api/v1`)).json()) as any).resources;
    expect(resources[0]).toMatchObject({ name: 'nodes', namespaced: false, kind: 'Node' });
  });
});
