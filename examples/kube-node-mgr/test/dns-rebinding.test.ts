// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
/**
 * DNS rebinding: a web page whose host name the attacker makes resolve to 127.0.0.1 reaches a server
 * listening on loopback, and is same-origin with it by its own `Host` (the Origin check compares the two). With
 * the demo users (`demo` / `demo`, an admin: the server prints them), in front of `kubectl proxy` on loopback
 * (`--kube-server`), any page the operator opened could sign in and run batches on the cluster. The server
 * listening on loopback now answers only to the loopback names.
 */
import http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { allowedHostsFlag } from '../src/server/config.js';
import { DemoCluster } from '../src/server/demo-cluster.js';
import { LOOPBACK_HOSTS } from '../src/server/host-rule.js';
import { RoundRobinProxy } from '../src/server/round-robin-proxy.js';
import { type Harness, login, startHarness, upgradeStatus } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/** A raw request with its own Host header (fetch does not send one but the URL's). */
function request(
  base: string,
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: unknown,
): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${base}${path}`, { method, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        text += chunk;
      });
      res.on('end', () => {
        let parsed: unknown = text;
        try {
          parsed = JSON.parse(text);
        } catch {}
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

describe('a server on loopback and a DNS-rebinding page', () => {
  it('refuses another host name: sign-in, pages, the API and the WebSocket upgrade', async () => {
    // What the server sets when listening on loopback (LOOPBACK_HOSTS, checked below).
    h = await startHarness({ app: { allowedHosts: ['localhost', '127.0.0.1', '::1'] } });
    const port = new URL(h.base).port;
    const evil = {
      host: `rebind.attacker.example:${port}`,
      origin: `http://rebind.attacker.example:${port}`,
    };
    const signIn = await request(
      h.base,
      'POST',
      '/api/login',
      { ...evil, 'content-type': 'application/json' },
      { username: 'ada', password: 'ada' },
    );
    expect(signIn).toMatchObject({ status: 403, body: { error: { code: 'forbidden_host' } } });
    // Which names it answers to, and how to add one: the page's own GET is answered so too.
    expect((await request(h.base, 'GET', '/', evil)).body.error.message).toBe(
      'this server answers only to localhost, 127.0.0.1, [::1], against DNS rebinding: open it under one of them, or list this name in --allowed-hosts (ALLOWED_HOSTS)',
    );
    // A session of the loopback name's, replayed under the other name (a token leaked to that page).
    const ada = await login(h.base, 'ada');
    const batch = await request(
      h.base,
      'POST',
      '/api/batch',
      { ...evil, cookie: ada.cookie, 'x-csrf-token': ada.csrf, 'content-type': 'application/json' },
      { operation: 'cordon', nodes: ['worker-1'] },
    );
    expect(batch.status).toBe(403);
    expect(h.cluster.node('worker-1')?.spec.unschedulable).toBeUndefined();
    expect((await request(h.base, 'GET', '/api/nodes', { ...evil, cookie: ada.cookie })).status).toBe(403);
    expect((await request(h.base, 'GET', '/progress/tasks', { ...evil, cookie: ada.cookie })).status).toBe(
      403,
    );
    expect(await upgradeStatus(h.base, { ...evil, cookie: ada.cookie })).not.toBe(101);
    // The loopback names are served.
    for (const name of ['localhost', '127.0.0.1', '127.0.0.2', '[::1]', 'LOCALHOST']) {
      const own = { host: `${name}:${port}`, origin: `http://${name}:${port}` };
      const ok = await request(
        h.base,
        'POST',
        '/api/login',
        { ...own, 'content-type': 'application/json' },
        { username: 'ada', password: 'ada' },
      );
      expect({ name, status: ok.status }).toEqual({ name, status: 200 });
      expect(await upgradeStatus(h.base, { ...own, cookie: ada.cookie })).toBe(101);
    }
  });

  it('ALLOWED_HOSTS: the loopback names by default on loopback, any elsewhere, a list, or *', () => {
    expect(LOOPBACK_HOSTS).toEqual(['localhost', '127.0.0.1', '::1']);
    expect(allowedHostsFlag(undefined, '127.0.0.1')).toEqual(['localhost', '127.0.0.1', '::1']);
    expect(allowedHostsFlag(undefined, 'localhost')).toEqual(['localhost', '127.0.0.1', '::1']);
    expect(allowedHostsFlag('', '::1')).toEqual(['localhost', '127.0.0.1', '::1']);
    expect(allowedHostsFlag(undefined, '0.0.0.0')).toBeUndefined();
    expect(allowedHostsFlag('*', '127.0.0.1')).toBeUndefined();
    expect(allowedHostsFlag('knm.example.com, localhost', '127.0.0.1')).toEqual([
      'knm.example.com',
      'localhost',
    ]);
    expect(allowedHostsFlag('[::1],fd00::1', 'localhost')).toEqual(['[::1]', 'fd00::1']);
    expect(() => allowedHostsFlag('knm.example.com:3000', '127.0.0.1')).toThrow(/--allowed-hosts/);
    expect(() => allowedHostsFlag('cafe.be:3000', '127.0.0.1')).toThrow(/--allowed-hosts/);
  });
});

describe("the demo cluster's API and a DNS-rebinding page", () => {
  let cluster: DemoCluster | undefined;
  afterEach(async () => {
    await cluster?.close();
    cluster = undefined;
  });

  // No credentials: before the fix a page under its own name patched and deleted nodes (200).
  it('refuses another host name on loopback with 403 Forbidden, and serves the loopback names', async () => {
    cluster = new DemoCluster();
    const base = await cluster.listen(0);
    const port = new URL(base).port;
    const evil = {
      host: `rebind.attacker.example:${port}`,
      origin: `http://rebind.attacker.example:${port}`,
    };
    const cordon = await request(
      base,
      'PATCH',
      '/api/v1/nodes/worker-1',
      { ...evil, 'content-type': 'application/merge-patch+json' },
      { spec: { unschedulable: true } },
    );
    expect(cordon).toMatchObject({ status: 403, body: { kind: 'Status', reason: 'Forbidden', code: 403 } });
    expect(cluster.node('worker-1')?.spec.unschedulable).toBeUndefined();
    expect((await request(base, 'DELETE', '/api/v1/nodes/worker-2', evil)).status).toBe(403);
    expect(cluster.node('worker-2')).toBeDefined();
    expect((await request(base, 'GET', '/api/v1/nodes', evil)).status).toBe(403);
    for (const name of ['localhost', '127.0.0.1', '127.0.0.2', '[::1]']) {
      const list = await request(base, 'GET', '/api/v1/nodes', { host: `${name}:${port}` });
      expect({ name, status: list.status }).toEqual({ name, status: 200 });
    }
  });
});

describe("behind the replica launcher's proxy", () => {
  let proxy: RoundRobinProxy | undefined;
  afterEach(async () => {
    await proxy?.close();
    proxy = undefined;
  });

  // The proxy passes Host through and a client's X-Forwarded-Host with it, under the secret the replica trusts
  // (which believes X-Forwarded-For and -Proto): the Host check reads Host alone, never a forwarded name, so a
  // rebinding page sending a loopback name in X-Forwarded-Host or Forwarded is refused all the same.
  it("refuses another Host though a client's X-Forwarded-Host or Forwarded names loopback", async () => {
    const secret = 'a-proxy-secret-of-the-launcher';
    h = await startHarness({
      app: { trustProxy: 1, proxySecret: secret, allowedHosts: ['localhost', '127.0.0.1', '::1'] },
    });
    proxy = new RoundRobinProxy([h.base], { secret });
    const url = await proxy.listen(0);
    const port = new URL(url).port;
    const evil = {
      host: `rebind.attacker.example:${port}`,
      origin: `http://rebind.attacker.example:${port}`,
    };
    for (const spoof of [
      { 'x-forwarded-host': `127.0.0.1:${port}` },
      { forwarded: `host="127.0.0.1:${port}"` },
    ]) {
      const signIn = await request(
        url,
        'POST',
        '/api/login',
        { ...evil, ...spoof, 'content-type': 'application/json' },
        { username: 'ada', password: 'ada' },
      );
      expect(signIn).toMatchObject({ status: 403, body: { error: { code: 'forbidden_host' } } });
      expect(await upgradeStatus(url, { ...evil, ...spoof })).not.toBe(101);
    }
    const own = await request(
      url,
      'POST',
      '/api/login',
      { host: `127.0.0.1:${port}`, 'content-type': 'application/json' },
      { username: 'ada', password: 'ada' },
    );
    expect(own.status).toBe(200);
  });
});
