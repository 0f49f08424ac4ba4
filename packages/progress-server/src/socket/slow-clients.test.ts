import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { afterEach, describe, expect, it } from 'vitest';
import { RawClient, startServer, type TestServer, upgradeStatus } from '../testing/harness.js';

/**
 * Issue 10, item 4 (and issue 16): slowloris and descriptor exhaustion. A server from
 * `ProgressServer.listen()` never dropped connections that sent a partial upgrade, and with the process
 * at `ulimit -n 1024` 1,000 silent TCP connections made new clients fail with ECONNRESET. Upgrades on
 * unknown paths and plain requests on the WebSocket path hung instead of being answered.
 */

const root = fileURLToPath(new URL('../../../../', import.meta.url));
const packageDir = fileURLToPath(new URL('../../', import.meta.url));

let env: TestServer | undefined;
const cleanups: Array<() => Promise<void> | void> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  await env?.close();
  env = undefined;
});

/** Opens a TCP connection that sends `payload` (or nothing) and then stays silent. */
function silent(port: number, payload?: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => {
      if (payload !== undefined) socket.write(payload);
      resolve(socket);
    });
    socket.on('error', reject);
  });
}

/** Resolves with the time the server took to close `socket`, or `undefined` if it is still open after `limitMs`. */
function closedWithin(socket: Socket, limitMs: number): Promise<number | undefined> {
  const start = Date.now();
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(undefined), limitMs);
    const done = () => {
      clearTimeout(timer);
      resolve(Date.now() - start);
    };
    socket.on('error', () => {});
    // Flowing, so whatever the server wrote before closing (a 408) does not hold back 'end'.
    socket.resume();
    socket.once('end', done);
    socket.once('close', done);
  });
}

function plainGet(url: string): Promise<{ status: number; upgrade: string | undefined }> {
  return new Promise((resolve, reject) => {
    const request = httpRequest(url, (response) => {
      response.resume();
      resolve({ status: response.statusCode ?? 0, upgrade: response.headers.upgrade });
    });
    request.setTimeout(5000, () => request.destroy(new Error('no answer within 5 s')));
    request.on('error', reject);
    request.end();
  });
}

class ServerChild {
  readonly process: ChildProcess;
  readonly #lines: Interface;
  readonly #queue: string[] = [];
  #wake: (() => void) | undefined;

  constructor(script: string) {
    // The limit is set by the shell that then becomes node, as an operator would run it.
    this.process = spawn('sh', ['-c', `ulimit -n 1024 && exec "${process.execPath}" "${script}"`], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    this.#lines = createInterface({ input: this.process.stdout! });
    this.#lines.on('line', (line) => {
      this.#queue.push(line);
      this.#wake?.();
    });
  }

  async next(timeoutMs = 10_000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    while (this.#queue.length === 0) {
      if (Date.now() > deadline) throw new Error('the server child said nothing');
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        setTimeout(resolve, 100);
      });
    }
    return JSON.parse(this.#queue.shift()!) as Record<string, unknown>;
  }

  async stats(): Promise<Record<string, unknown>> {
    this.process.stdin!.write('stats\n');
    return this.next();
  }

  async stop(): Promise<void> {
    const exited = new Promise((resolve) => this.process.once('exit', resolve));
    this.process.stdin!.write('exit\n');
    const timer = setTimeout(() => this.process.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  }
}

async function bundleChild(): Promise<string> {
  // Inside the repository's node_modules, so the bundle's external imports (ws, prom-client) resolve.
  const cache = join(root, 'node_modules/.cache');
  mkdirSync(cache, { recursive: true });
  const directory = mkdtempSync(join(cache, 'finishline-listen-child-'));
  cleanups.push(() => rmSync(directory, { recursive: true, force: true }));
  const outfile = join(directory, 'listen-child.mjs');
  await build({
    entryPoints: [join(packageDir, 'src/testing/listen-child.ts')],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    logLevel: 'silent',
    external: ['ws', 'prom-client'],
    alias: {
      '@finishline/core': join(root, 'packages/progress-core/src/index.ts'),
      '@finishline/core/internal': join(root, 'packages/progress-core/src/internal.ts'),
    },
  });
  return outfile;
}

describe('descriptor exhaustion', () => {
  it('1,000 silent connections under ulimit -n 1024 do not stop a new client', async () => {
    const child = new ServerChild(await bundleChild());
    cleanups.push(() => child.stop());
    const { port } = (await child.next()) as { port: number };
    const attackers: Socket[] = [];
    cleanups.push(() => {
      for (const socket of attackers) socket.destroy();
    });
    for (let i = 0; i < 1000; i += 1) {
      const socket = await silent(port);
      socket.on('error', () => {});
      attackers.push(socket);
    }
    const underAttack = await child.stats();

    // A new WebSocket client and the health probe still get through, quickly.
    const started = Date.now();
    const client = await RawClient.connect(`ws://127.0.0.1:${port}/progress`, { user: 'alice' });
    const wsMs = Date.now() - started;
    cleanups.push(async () => {
      await client.close();
    });
    const health = await plainGet(`http://127.0.0.1:${port}/progress/healthz`);
    expect(health.status).toBe(200);
    const after = await child.stats();
    const stillOpen = attackers.filter((socket) => !socket.destroyed && socket.readyState === 'open').length;
    // The figures the issue asks for (read them in the test output).
    process.stdout.write(
      `[fd test] server under attack: ${JSON.stringify(underAttack)}; after the new client: ${JSON.stringify(after)}; ` +
        `attacker sockets the client still sees open: ${stillOpen}/1000; new WebSocket client opened in ${wsMs} ms\n`,
    );
    expect(after.sockets).toBe(1);
    expect(after.connections as number).toBeLessThanOrEqual(200);
  }, 60_000);
});

describe('slow and stray requests', () => {
  /** A server whose requests have 300 ms for their headers (headersTimeoutMs): its port. */
  async function listenWithHeadersTimeout(): Promise<number> {
    const { ProgressServer } = await import('../progress-server.js');
    const { headerAuth } = await import('../testing/harness.js');
    const { MemoryProgressStore } = await import('@finishline/core');
    const server = await ProgressServer.listen(
      { store: new MemoryProgressStore(), authenticate: headerAuth },
      { port: 0, host: '127.0.0.1', headersTimeoutMs: 300 },
    );
    cleanups.push(() => server.close({ timeoutMs: 500 }));
    const address = server.httpServer!.address();
    return typeof address === 'object' && address !== null ? address.port : 0;
  }

  it('closes a connection that sends only part of its headers (headersTimeoutMs)', async () => {
    const port = await listenWithHeadersTimeout();
    const partial = await silent(port, 'GET /progress HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n');
    const nothing = await silent(port);
    const [a, b] = await Promise.all([closedWithin(partial, 5000), closedWithin(nothing, 5000)]);
    expect(a).toBeDefined();
    expect(b).toBeDefined();
  });

  it('closes a kept-alive connection whose next request trickles its headers (headersTimeoutMs per request)', async () => {
    const port = await listenWithHeadersTimeout();
    // A first request answered in full, the connection kept alive; then a second one whose headers come
    // a byte every 50 ms, never finished: each byte is activity, so only a deadline on the whole header
    // section (Node's headersTimeout, from the request's first byte) ends it.
    const socket = await silent(port, 'GET /progress/healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    let answered = '';
    socket.on('data', (chunk: Buffer) => {
      answered += chunk.toString();
    });
    await new Promise<void>((resolve) => {
      const check = setInterval(() => {
        if (answered.includes('\r\n\r\n')) {
          clearInterval(check);
          resolve();
        }
      }, 5);
    });
    expect(answered).toMatch(/^HTTP\/1\.1 200/);
    const header = `GET /progress/healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ${'a'.repeat(200)}`;
    let sent = 0;
    const trickle = setInterval(() => {
      if (!socket.destroyed && sent < header.length) socket.write(header[sent++] as string);
    }, 50);
    cleanups.push(() => clearInterval(trickle));
    const closedAfter = await closedWithin(socket, 5000);
    clearInterval(trickle);
    expect(closedAfter).toBeDefined();
    // headersTimeoutMs (300 ms), checked every second; far from the 10 s the trickle would last.
    expect(closedAfter as number).toBeLessThan(3000);
  });

  it('destroys an upgrade that does not complete within upgradeTimeoutMs (a hook that never answers)', async () => {
    env = await startServer({
      upgradeTimeoutMs: 200,
      authenticate: () => new Promise(() => {}),
    });
    const socket = await silent(
      env.port,
      'GET /progress HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\n\r\n',
    );
    expect(await closedWithin(socket, 5000)).toBeDefined();
    expect((await env.server.metrics.connectionsDropped.get()).values).toEqual([
      expect.objectContaining({ labels: { reason: 'upgrade_timeout' }, value: 1 }),
    ]);
  });

  it('drops the oldest unauthenticated connection of an address over maxPendingConnectionsPerAddress', async () => {
    env = await startServer({ maxPendingConnectionsPerAddress: 3 });
    const sockets: Socket[] = [];
    for (let i = 0; i < 5; i += 1) sockets.push(await silent(env.port));
    cleanups.push(() => {
      for (const socket of sockets) socket.destroy();
    });
    expect(await closedWithin(sockets[0]!, 3000)).toBeDefined();
    expect(await closedWithin(sockets[1]!, 3000)).toBeDefined();
    expect(await closedWithin(sockets[4]!, 200)).toBeUndefined();
    // An authenticated socket no longer counts: five of them all stay.
    const clients = await Promise.all(
      [1, 2, 3, 4, 5].map(() => RawClient.connect(env!.wsUrl, { user: 'alice' })),
    );
    cleanups.push(async () => {
      await Promise.all(clients.map((client) => client.close()));
    });
    expect(env.server.connectionCount).toBe(5);
  });

  it('drops the oldest unauthenticated connection over maxPendingConnections, all addresses together', async () => {
    env = await startServer({ maxPendingConnections: 2 });
    const sockets: Socket[] = [];
    for (let i = 0; i < 3; i += 1) sockets.push(await silent(env.port));
    cleanups.push(() => {
      for (const socket of sockets) socket.destroy();
    });
    expect(await closedWithin(sockets[0]!, 3000)).toBeDefined();
    expect(await closedWithin(sockets[2]!, 200)).toBeUndefined();
    expect((await env.server.metrics.connectionsDropped.get()).values).toEqual([
      expect.objectContaining({ labels: { reason: 'pending_total_cap' }, value: 1 }),
    ]);
  });

  it('answers an upgrade on an unknown path with 404 and a plain request on the WebSocket path with 426', async () => {
    env = await startServer();
    const stray = await upgradeStatus(`ws://127.0.0.1:${env.port}/elsewhere`, { 'x-user': 'alice' });
    expect(stray.status).toBe(404);
    const plain = await plainGet(`${env.httpUrl}/progress`);
    expect(plain).toEqual({ status: 426, upgrade: 'websocket' });
  });

  it("keeps a client's Connection: close in the 426, and closes the connection after it", async () => {
    // The 426 set `Connection: Upgrade` whatever the request said: Node then took the connection for a
    // kept-alive one, answered without `close` and left it open after a request that asked it closed.
    env = await startServer();
    const socket = await silent(
      env.port,
      'GET /progress HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n',
    );
    cleanups.push(() => {
      socket.destroy();
    });
    let answer = '';
    socket.on('data', (chunk: Buffer) => {
      answer += chunk.toString('latin1');
    });
    expect(await closedWithin(socket, 2000)).toBeDefined();
    expect(answer).toMatch(/^HTTP\/1\.1 426 /);
    expect(answer).toMatch(/\r\nconnection: upgrade, close\r\n/i);
    expect(answer).toMatch(/\r\nupgrade: websocket\r\n/i);
  });
});
