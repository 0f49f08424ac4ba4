import { randomBytes } from 'node:crypto';
import type { Server } from 'node:http';
import { type AddressInfo, connect } from 'node:net';
import { MemoryProgressStore, PROTOCOL_NAME } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import type { ProgressServerOptions } from '../options.js';
import { ProgressServer } from '../progress-server.js';
import { gate } from '../testing/harness.js';

/** A caller's WebSocketServer on a free port, and a ProgressServer on it with `options`. */
async function onCallersWss(options: Omit<ProgressServerOptions, 'store' | 'wss'>) {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise<void>((resolve) => wss.once('listening', () => resolve()));
  const server = new ProgressServer({ store: new MemoryProgressStore(), wss, ...options });
  return { wss, server, port: (wss.address() as AddressInfo).port };
}

/** An authenticate hook that never answers; `called` opens once it was called. */
function hangingHook() {
  const called = gate();
  const authenticate = () => {
    called.open();
    return new Promise<never>(() => {});
  };
  return { called, authenticate };
}

/** A TCP peer that asks `port` for a WebSocket upgrade, then answers nothing; `gone` once its socket closed. */
function silentPeer(port: number) {
  const peer = connect(port, '127.0.0.1');
  peer.on('error', () => {});
  peer.write(
    'GET /progress HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n` +
      `Sec-WebSocket-Protocol: ${PROTOCOL_NAME}\r\n\r\n`,
  );
  const gone = new Promise<void>((resolve) => peer.once('close', () => resolve()));
  return { peer, gone };
}

/**
 * A shutdown does not wait for authentication hooks: an upgrade (or a caller's socket) whose hook has
 * not answered when `close()` starts is refused then, as it would be once the hook answered. Waiting for
 * the hook, `close()` of a server made by `listen()` took until `upgradeTimeoutMs` (10 s by default)
 * whatever its own deadline, and never returned while the hook hung.
 */
describe('close() with authentications under way', () => {
  it('refuses an upgrade whose authenticate hook has not answered, and returns', async () => {
    const { called: hookCalled, authenticate } = hangingHook();
    const server = await ProgressServer.listen(
      {
        store: new MemoryProgressStore(),
        // Far beyond the test's timeout: only the shutdown can end this upgrade.
        upgradeTimeoutMs: 3_600_000,
        authenticate,
      },
      { port: 0, host: '127.0.0.1' },
    );
    const { port } = (server.httpServer as Server).address() as AddressInfo;
    const ws = new WebSocket(`ws://127.0.0.1:${port}/progress`, [PROTOCOL_NAME]);
    const refused = new Promise<number | undefined>((resolve) => {
      ws.on('unexpected-response', (_request, response) => resolve(response.statusCode));
      ws.on('error', () => resolve(undefined));
    });
    await hookCalled.promise;
    await server.close({ timeoutMs: 200 });
    expect(await refused).toBe(503);
  });

  it("closes a caller's socket whose authenticate hook has not answered with 1001", async () => {
    const { called: hookCalled, authenticate } = hangingHook();
    const { wss, server, port } = await onCallersWss({ authenticate });
    const ws = new WebSocket(`ws://127.0.0.1:${port}/progress`, [PROTOCOL_NAME]);
    ws.on('error', () => {});
    const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)));
    await hookCalled.promise;
    await server.close({ timeoutMs: 200 });
    expect(await closed).toBe(1001);
    await new Promise((resolve) => wss.close(resolve));
  });

  it("terminates at the deadline a caller's socket refused while its hook ran, whose peer never answers the close", async () => {
    // Closed with 1001 and left to ws: a peer that never answered the close frame (a frozen client, a dead
    // host) kept the socket, and the process, for ws's 30 s close timeout after close() had returned,
    // though close() terminates whatever is left of its own sockets at its deadline.
    const { called: hookCalled, authenticate } = hangingHook();
    const { wss, server, port } = await onCallersWss({ upgradeTimeoutMs: 3_600_000, authenticate });
    // A peer that upgrades, then answers nothing (what it receives is read and dropped, so that it sees
    // its socket end).
    const { peer, gone } = silentPeer(port);
    peer.resume();
    await hookCalled.promise;
    await server.close({ timeoutMs: 300 });
    const waited = await Promise.race([
      gone.then(() => 'gone'),
      new Promise((resolve) => setTimeout(() => resolve('still open'), 3000)),
    ]);
    expect(waited).toBe('gone');
    await new Promise((resolve) => wss.close(resolve));
  });
});

/**
 * A caller's socket the server closes without serving it (its hook too slow, its credentials refused)
 * is terminated when the peer does not finish the closing handshake within the grace its connections
 * get (2 s). Left to ws, a peer that never answered the close frame kept the socket, its pending slot
 * and the process for ws's 30 s close timeout, and past the deadline of a close() meanwhile.
 */
describe("a caller's socket refused outside a shutdown, whose peer never answers the close", () => {
  const hangs = (): Promise<null> => new Promise(() => {});
  const refuses = (): null => null;
  it.each([
    ['closed 1011 at upgradeTimeoutMs', { upgradeTimeoutMs: 50, authenticate: hangs }],
    ['refused 4001 by its hook', { authenticate: refuses }],
  ] as const)('is terminated after a short grace: %s', async (_case, options) => {
    const { wss, server, port } = await onCallersWss(options);
    const { peer, gone } = silentPeer(port);
    const received: Buffer[] = [];
    peer.on('data', (chunk: Buffer) => received.push(chunk));
    const waited = await Promise.race([
      gone.then(() => 'gone'),
      new Promise((resolve) => setTimeout(() => resolve('still open'), 5000)),
    ]);
    // It was sent the close frame first (0x88), after the 101.
    expect(Buffer.concat(received).includes(Buffer.from([0x88]))).toBe(true);
    expect(waited).toBe('gone');
    await server.close({ timeoutMs: 100 });
    await new Promise((resolve) => wss.close(resolve));
  });
});
