import { readFileSync } from 'node:fs';
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
});
