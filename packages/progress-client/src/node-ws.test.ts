import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ClientFrame, ServerFrame } from '@finishline/core';
import { PROTOCOL_NAME, PROTOCOL_NAME_V1, PROTOCOL_VERSION } from '@finishline/core';
import { build } from 'esbuild';
import { describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { ProgressClient } from './progress-client.js';
import { FakeTask } from './testing/fake-server.js';

/** Counts of the resource kinds a leaked client would leave: timers and TCP handles. */
function resources(): Record<string, number> {
  const counts: Record<string, number> = { Timeout: 0, TCPSocketWrap: 0, TCPServerWrap: 0 };
  for (const kind of process.getActiveResourcesInfo())
    if (kind in counts) counts[kind] = (counts[kind] ?? 0) + 1;
  return counts;
}

/** A tiny real server speaking just enough of the protocol: hello, then the whole task on subscribe. */
async function startServer(task: FakeTask) {
  const http = createServer();
  const wss = new WebSocketServer({
    server: http,
    handleProtocols: (protocols) => (protocols.has(PROTOCOL_NAME) ? PROTOCOL_NAME : false),
  });
  const received: ClientFrame[] = [];
  const upgrades: IncomingMessage[] = [];
  wss.on('connection', (socket, request) => {
    upgrades.push(request);
    const send = (frame: ServerFrame) => socket.send(JSON.stringify(frame));
    send({ type: 'hello', protocol: PROTOCOL_VERSION, serverId: 'node-test', heartbeatIntervalMs: 60_000 });
    socket.on('message', (data) => {
      const frame = JSON.parse(String(data)) as ClientFrame;
      received.push(frame);
      if (frame.type !== 'subscribe') return;
      send({ type: 'snapshot', task: task.view(0) });
      for (const event of task.events) send({ type: 'event', event });
    });
  });
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  const { port } = http.address() as AddressInfo;
  return {
    port,
    received,
    upgrades,
    close: async () => {
      for (const client of wss.clients) client.terminate();
      await new Promise<void>((resolve) => wss.close(() => resolve()));
      await new Promise<void>((resolve) => http.close(() => resolve()));
    },
  };
}

describe('in Node with the real ws', () => {
  it('watches a task to its end and leaves no timer or socket behind after close()', async () => {
    const baseline = resources();
    const task = new FakeTask('node-task', 2);
    task.item('a');
    task.item('b');
    task.end();
    const server = await startServer(task);
    // `WebSocket` from ws fits the option's type as is: no cast.
    const client = new ProgressClient({
      url: `ws://127.0.0.1:${server.port}/progress`,
      WebSocket,
      headers: { authorization: 'Bearer node-token' },
    });
    const second = client.watch('unfinished'); // keeps watchdog-free timers alive: the heartbeat deadline
    const watch = client.watch('node-task');
    const final = await watch.done;
    expect(final).toMatchObject({ status: 'completed', seq: 3, finished: true });
    expect(server.upgrades[0]?.headers.authorization).toBe('Bearer node-token');
    expect(server.upgrades[0]?.headers['sec-websocket-protocol']).toBe(
      `${PROTOCOL_NAME},${PROTOCOL_NAME_V1}`,
    );
    await waitFor(() => server.received.some((frame) => frame.type === 'ack' && frame.seq === 3));
    expect(resources().Timeout).toBeGreaterThan(baseline.Timeout ?? 0);
    await client.close();
    await expect(second.done).rejects.toMatchObject({ code: 'closed' });
    await server.close();
    // Handles leave the list once libuv finished closing them: a few turns of the loop, not a time.
    const leftover = () =>
      Object.entries(resources())
        .filter(([kind, count]) => count > (baseline[kind] ?? 0))
        .map(([kind]) => kind);
    for (let turn = 0; turn < 20 && leftover().length > 0; turn++) {
      await new Promise((resolve) => setImmediate(resolve));
    }
    // Nothing above what the test runner itself had before the test.
    expect(leftover()).toEqual([]);
  });

  it("close() does not wait out ws's 30 s close handshake when the server stopped reading (a frozen replica)", async () => {
    const server = await startServer(new FakeTask('node-task', 2));
    const client = new ProgressClient({ url: `ws://127.0.0.1:${server.port}/progress`, WebSocket });
    const watch = client.watch('node-task');
    await waitFor(() => server.received.some((frame) => frame.type === 'subscribe'));
    // The server reads nothing more: the client's close frame is never answered.
    for (const request of server.upgrades) request.socket.pause();
    const outcome = await Promise.race([
      client.close().then(() => 'closed'),
      new Promise((resolve) => setTimeout(resolve, 10_000, 'still waiting after 10 s')),
    ]);
    expect(outcome).toBe('closed');
    await expect(watch.done).rejects.toMatchObject({ code: 'closed' });
    await server.close();
  }, 15_000);

  it("close() with Node's built-in WebSocket (undici) resolves, and the process exits, when the server stopped reading", async () => {
    // Node 20 has the built-in WebSocket only behind a flag: the client runs in a child process that has it.
    // Until 7 December 2026 undici waited for the server's answering close frame for ever (no limit of its
    // own, no terminate()): close() never resolved, and its TCP socket kept the process alive.
    const server = await startServer(new FakeTask('node-task', 2));
    const script = join(mkdtempSync(join(tmpdir(), 'finishline-undici-')), 'client.mjs');
    await build({
      stdin: {
        contents: `
          import { ProgressClient } from ${JSON.stringify(fileURLToPath(new URL('./index.ts', import.meta.url)))};
          const client = new ProgressClient({ url: process.argv[2], WebSocket: globalThis.WebSocket, token: 'tok' });
          client.watch('node-task').done.catch(() => undefined);
          process.stdin.once('data', async () => {
            process.stdin.destroy();
            const started = Date.now();
            await client.close();
            console.log('closed after ' + (Date.now() - started) + ' ms');
          });`,
        resolveDir: fileURLToPath(new URL('.', import.meta.url)),
        loader: 'ts',
      },
      bundle: true,
      format: 'esm',
      platform: 'node',
      outfile: script,
      logLevel: 'error',
      external: ['ws', 'react'],
      plugins: [
        {
          name: 'finishline-core-source',
          setup(b) {
            b.onResolve({ filter: /^@finishline\/core(\/internal)?$/ }, (args) => ({
              path: fileURLToPath(
                new URL(
                  `../../progress-core/src/${args.path.endsWith('internal') ? 'internal' : 'index'}.ts`,
                  import.meta.url,
                ),
              ),
            }));
          },
        },
      ],
    });
    const child = spawn(
      process.execPath,
      ['--experimental-websocket', script, `ws://127.0.0.1:${server.port}/progress`],
      {
        stdio: ['pipe', 'pipe', 'ignore'],
      },
    );
    let output = '';
    child.stdout.on('data', (chunk) => {
      output += String(chunk);
    });
    const exited = new Promise<string>((resolve) => child.once('exit', () => resolve('exited')));
    try {
      await waitFor(() => server.received.some((frame) => frame.type === 'subscribe'), 10_000);
      // The server reads nothing more: the client's close frame is never answered.
      for (const request of server.upgrades) request.socket.pause();
      child.stdin.write('close\n');
      const outcome = await Promise.race([
        exited,
        new Promise((resolve) => setTimeout(resolve, 10_000, 'still running after 10 s')),
      ]);
      expect({ outcome, closed: /^closed after \d+ ms$/m.test(output) }).toEqual({
        outcome: 'exited',
        closed: true,
      });
    } finally {
      child.kill();
      await server.close();
    }
  }, 30_000);

  it("a socket dropped for its silence (a frozen server) does not outlive close() by ws's 30 s either", async () => {
    const server = await startServer(new FakeTask('node-task', 2));
    const sockets: WebSocket[] = [];
    class Tracked extends WebSocket {
      constructor(...args: ConstructorParameters<typeof WebSocket>) {
        super(...args);
        sockets.push(this);
      }
    }
    const client = new ProgressClient({
      url: `ws://127.0.0.1:${server.port}/progress`,
      WebSocket: Tracked,
      heartbeatTimeoutMs: 200,
    });
    client.watch('node-task').done.catch(() => undefined);
    await waitFor(() => server.received.some((frame) => frame.type === 'subscribe'));
    for (const request of server.upgrades) request.socket.pause(); // reads nothing more: frozen
    await waitFor(() => sockets.length > 1); // dropped with 4010 after 200 ms of silence, and replaced
    await client.close();
    await waitFor(() => sockets[0]?.readyState === WebSocket.CLOSED, 10_000);
    await server.close();
  }, 15_000);
});

describe('writes to the network with the real ws', () => {
  it('sends the terminal ack and the unsubscribe after it in one write', async () => {
    const task = new FakeTask('node-batch', 1);
    task.item('a');
    task.end();
    const server = await startServer(task);
    // Chunks per write the client's TCP socket made to the network, counted from the WebSocket's `open`.
    const writes: number[] = [];
    class CountingWebSocket extends WebSocket {
      constructor(...args: ConstructorParameters<typeof WebSocket>) {
        super(...args);
        this.once('open', () => {
          const tcp = (this as unknown as { _socket: Socket })._socket;
          const write = tcp._write.bind(tcp);
          const writev = tcp._writev?.bind(tcp);
          tcp._write = (chunk, encoding, callback) => {
            writes.push(1);
            write(chunk, encoding, callback);
          };
          if (writev !== undefined) {
            tcp._writev = (chunks, callback) => {
              writes.push(chunks.length);
              writev(chunks, callback);
            };
          }
        });
      }
    }
    // No ack timer within the test: the only acks are the terminal one and what it carries.
    const client = new ProgressClient({
      url: `ws://127.0.0.1:${server.port}/progress`,
      WebSocket: CountingWebSocket,
      ackDelayMs: 60_000,
    });
    const watch = client.watch('node-batch');
    await watch.done;
    await waitFor(() => server.received.some((frame) => frame.type === 'unsubscribe'));
    expect(server.received.map((frame) => frame.type)).toEqual(['subscribe', 'ack', 'unsubscribe']);
    // The subscribe, then the ack and the unsubscribe together (without batching: three writes).
    expect(writes).toHaveLength(2);
    await client.close();
    await server.close();
  });
});

describe('upgrade refused over HTTP (ws reports the status, browsers do not)', () => {
  for (const [status, code] of [
    [401, 'unauthenticated'],
    [403, 'forbidden'],
  ] as const) {
    it(`treats a ${status} at the upgrade as fatal (${code}), without reconnecting`, async () => {
      const http = createServer();
      let upgrades = 0;
      http.on('upgrade', (_request, socket) => {
        upgrades++;
        socket.end(`HTTP/1.1 ${status} No\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      });
      await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
      const { port } = http.address() as AddressInfo;
      const client = new ProgressClient({
        url: `ws://127.0.0.1:${port}/progress`,
        WebSocket,
        httpFallbackAfterAttempts: 0,
      });
      client.on('error', () => undefined);
      const watch = client.watch('t1');
      await expect(watch.done).rejects.toMatchObject({ code });
      expect(client.state).toBe('closed');
      expect(upgrades).toBe(1);
      await client.close();
      await new Promise<void>((resolve) => http.close(() => resolve()));
    });
  }
});

/** Waits until `condition()` holds, for at most `limitMs`; then fails instead of hanging the test. */
async function waitFor(condition: () => boolean, limitMs = 5_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition still false after ${limitMs} ms`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}
