import { readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { freePort, type ReplicaSet, RoundRobinProxy, startReplicaSet } from '../src/server/replica-set.js';

const echoServer = fileURLToPath(new URL('./fixtures/echo-server.mjs', import.meta.url));
const PASSWORD = 'pw-4e1c9a7f';
const DATABASE_URL = `postgres://app:${PASSWORD}@127.0.0.1:1/app`;

interface Echo {
  argv: string[];
  pid: number;
  databaseUrl: string | null;
  hasSessionSecret: boolean;
  proxyAuthenticated: boolean;
  proxySecretOnCommandLine: boolean;
}

let set: ReplicaSet | undefined;
afterEach(async () => {
  await set?.stop();
  set = undefined;
});

describe('startReplicaSet', () => {
  it('binds the proxy first, so the demo cluster cannot take the port asked for', async () => {
    const port = await freePort();
    // The old order started the demo cluster on this port first, then the proxy failed with EADDRINUSE.
    set = await startReplicaSet({
      serverScript: echoServer,
      replicas: 2,
      port,
      demoPort: port,
      databaseUrl: DATABASE_URL,
    });
    expect(set.url).toBe(`http://127.0.0.1:${port}`);
    expect(set.demoUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(new URL(set.demoUrl as string).port).not.toBe(String(port));
    const echo = (await (await fetch(`${set.url}/`)).json()) as Echo;
    expect(echo.argv).toContain('--kube-server');
  });

  it('passes the database URL to the replicas in their environment, never on their command line', async () => {
    set = await startReplicaSet({
      serverScript: echoServer,
      replicas: 2,
      port: 0,
      demoPort: 0,
      databaseUrl: DATABASE_URL,
    });
    const seen = new Set<number>();
    // Round robin: two requests reach both replicas.
    for (let i = 0; i < 2; i++) {
      const echo = (await (await fetch(`${set.url}/`)).json()) as Echo;
      seen.add(echo.pid);
      expect(echo.databaseUrl).toBe(DATABASE_URL);
      expect(echo.hasSessionSecret).toBe(true);
      // The proxy's secret, which makes a replica believe its X-Forwarded-For (and not a direct client's).
      expect(echo.proxyAuthenticated).toBe(true);
      expect(echo.proxySecretOnCommandLine).toBe(false);
      expect(echo.argv.join(' ')).not.toContain(PASSWORD);
      expect(echo.argv.join(' ')).not.toContain('postgres://');
      expect(echo.argv).not.toContain('--database-url');
    }
    expect(seen).toEqual(new Set(set.replicas.map((r) => r.child.pid)));
    // What `ps` shows: the kernel's copy of each replica's command line.
    for (const replica of set.replicas) {
      const cmdline = readFileSync(`/proc/${replica.child.pid}/cmdline`, 'utf8');
      expect(cmdline).toContain('echo-server.mjs');
      expect(cmdline).not.toContain(PASSWORD);
    }
  });

  it('points the replicas at a real Kubernetes with kubeArgs, starting no demo cluster', async () => {
    set = await startReplicaSet({
      serverScript: echoServer,
      replicas: 1,
      port: 0,
      kubeArgs: ['--kubeconfig', '/etc/kube/config'],
      serverArgs: ['--concurrency', '2'],
      namePrefix: 'web',
      databaseUrl: DATABASE_URL,
    });
    expect(set.cluster).toBeUndefined();
    expect(set.demoUrl).toBeUndefined();
    const echo = (await (await fetch(`${set.url}/`)).json()) as Echo;
    expect(echo.argv).toEqual([
      '--host',
      '127.0.0.1',
      '--port',
      '0',
      '--kubeconfig',
      '/etc/kube/config',
      '--name',
      'web-1',
      // The round-robin proxy in front sets X-Forwarded-For: one hop to trust.
      '--trust-proxy-hops',
      '1',
      '--concurrency',
      '2',
    ]);
  });

  it('stops what it started when the port asked for is taken', async () => {
    const holder = new RoundRobinProxy();
    const url = await holder.listen(0);
    try {
      const port = Number(new URL(url).port);
      await expect(
        startReplicaSet({ serverScript: echoServer, port, demoPort: 0, databaseUrl: DATABASE_URL }),
      ).rejects.toMatchObject({ code: 'EADDRINUSE' });
    } finally {
      await holder.close();
    }
  });
});

describe('RoundRobinProxy', () => {
  it('answers 503 with a JSON error while it has no backend', async () => {
    const proxy = new RoundRobinProxy();
    const url = await proxy.listen(0);
    try {
      const res = await fetch(`${url}/api/session`);
      expect(res.status).toBe(503);
      expect(await res.json()).toEqual({ error: { code: 'starting', message: 'the replicas are starting' } });
    } finally {
      await proxy.close();
    }
  });

  it('sends requests, bodies and upgrades to a live backend when one refuses (a replica killed with -9)', async () => {
    const live = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => {
        body += c.toString('utf8');
      });
      req.on('end', () => res.end(`live ${req.method} ${body}`));
    });
    live.on('upgrade', (_req, socket) => {
      socket.end('HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\nhello');
    });
    await new Promise<void>((resolve) => live.listen(0, '127.0.0.1', resolve));
    const livePort = (live.address() as net.AddressInfo).port;
    const deadPort = await freePort();
    const routes: string[] = [];
    const proxy = new RoundRobinProxy([`http://127.0.0.1:${deadPort}`, `http://127.0.0.1:${livePort}`], {
      onRoute: (r) => routes.push(`${r.kind} ${new URL(r.backend).port}`),
    });
    const url = await proxy.listen(0);
    try {
      for (let i = 0; i < 4; i++) {
        const res = await fetch(`${url}/x`, { method: 'POST', body: `n${i}` });
        expect(res.status).toBe(200);
        expect(await res.text()).toBe(`live POST n${i}`);
      }
      const text = await new Promise<string>((resolve, reject) => {
        const socket = net.connect(Number(new URL(url).port), '127.0.0.1', () => {
          socket.write('GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n');
        });
        let got = '';
        socket.on('data', (c) => {
          got += c.toString('utf8');
        });
        socket.on('close', () => resolve(got));
        socket.on('error', reject);
      });
      expect(text).toContain('101 Switching Protocols');
      expect(text).toContain('hello');
      // Every request and the upgrade ended on the live backend.
      expect(routes).toEqual([...Array(4).fill(`http ${livePort}`), `upgrade ${livePort}`]);
    } finally {
      await proxy.close();
      live.closeAllConnections();
      await new Promise<void>((resolve) => live.close(() => resolve()));
    }
  });

  it('answers a plain-text 502 when every backend refuses', async () => {
    const proxy = new RoundRobinProxy([`http://127.0.0.1:${await freePort()}`]);
    const url = await proxy.listen(0);
    try {
      const res = await fetch(`${url}/api/session`);
      expect(res.status).toBe(502);
      expect(await res.text()).toBe('bad gateway');
    } finally {
      await proxy.close();
    }
  });
});
