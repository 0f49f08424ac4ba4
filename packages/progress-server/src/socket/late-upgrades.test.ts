import { createServer } from 'node:http';
import { type AddressInfo, connect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { MemoryProgressStore, PROTOCOL_NAME } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { ProgressServer } from '../progress-server.js';
import { headerAuth } from '../testing/harness.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/**
 * `handleUpgrade` called by a router that dispatches upgrades itself, after something of its own that
 * takes time (a lookup, its own checks): the client may have gone meanwhile, its socket closed before the
 * server ever saw it.
 */
describe('handleUpgrade of a socket that closed before the call', () => {
  it('keeps nothing of it: not the socket, nor a refusal at close()', async () => {
    const progress = new ProgressServer({ store: new MemoryProgressStore(), authenticate: headerAuth });
    const httpServer = createServer();
    const dispatched: WeakRef<Duplex>[] = [];
    httpServer.on('upgrade', (request, socket: Duplex, head) => {
      socket.on('error', () => {});
      // The router's own work outlives the client: its connection drops meanwhile (a reset, here played by
      // destroying the server's end), and the router dispatches the upgrade after.
      setImmediate(() => socket.destroy());
      socket.once('close', () =>
        setImmediate(() => {
          progress.handleUpgrade(request, socket, head);
          dispatched.push(new WeakRef(socket));
        }),
      );
    });
    await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
    const { port } = httpServer.address() as AddressInfo;
    const clients: Socket[] = [];
    try {
      for (let i = 0; i < 20; i += 1) {
        const client = connect(port, '127.0.0.1');
        clients.push(client);
        await new Promise((resolve) => client.once('connect', resolve));
        client.write(
          `GET /progress HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
            `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${Buffer.from('0123456789abcdef').toString('base64')}\r\n` +
            `Sec-WebSocket-Protocol: ${PROTOCOL_NAME}\r\nX-User: alice\r\n\r\n`,
        );
        client.on('error', () => {});
      }
      await expect.poll(() => dispatched.length).toBe(20);
      for (let i = 0; i < 5; i += 1) {
        gc();
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      // Until 6 December 2026 the server held each such socket (and its request) for as long as it ran:
      // an upgrade under way that nothing settled any more.
      expect(dispatched.filter((socket) => socket.deref() !== undefined)).toHaveLength(0);
      await progress.close({ timeoutMs: 100 });
      // ... and refused them all at close(), counting as turned away clients long gone.
      expect((await progress.metrics.upgradesRejected.get()).values).toEqual([]);
    } finally {
      for (const client of clients) client.destroy();
      await progress.close({ timeoutMs: 0 });
      await new Promise((resolve) => httpServer.close(resolve));
    }
  });
});
