import type { AddressInfo } from 'node:net';
import { MemoryProgressStore, PROTOCOL_NAME, PROTOCOL_NAME_V1 } from '@finishline/core';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { ProgressServer } from '../progress-server.js';

/**
 * A caller's `WebSocketServer` (the `wss` option) gets the deadlines of the server's own upgrades: its
 * sockets are authenticated after the upgrade, and a hook that never settled kept the socket (and its
 * pending slot) open for ever, since `authTimeoutMs` only starts once the hook has answered.
 */
const cleanups: Array<() => Promise<unknown> | unknown> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function externalServer(
  options: Partial<ConstructorParameters<typeof ProgressServer>[0]>,
): Promise<{ server: ProgressServer; url: string }> {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise<void>((resolve) => wss.once('listening', () => resolve()));
  cleanups.push(() => new Promise((resolve) => wss.close(resolve)));
  const server = new ProgressServer({ store: new MemoryProgressStore(), wss, ...options });
  cleanups.push(() => server.close({ timeoutMs: 200 }));
  const { port } = wss.address() as AddressInfo;
  return { server, url: `ws://127.0.0.1:${port}/progress` };
}

describe("a caller's WebSocketServer", () => {
  it('closes a socket whose authenticate hook does not answer within upgradeTimeoutMs with 1011', async () => {
    const { server, url } = await externalServer({
      upgradeTimeoutMs: 100,
      authenticate: () => new Promise(() => {}),
    });
    const ws = new WebSocket(url, [PROTOCOL_NAME]);
    ws.on('error', () => {});
    cleanups.push(() => ws.terminate());
    // Bounded well above the deadline, so that a socket left open fails here rather than by the test timeout.
    const code = await new Promise<number | undefined>((resolve) => {
      const bound = setTimeout(() => resolve(undefined), 3000);
      ws.on('close', (closed) => {
        clearTimeout(bound);
        resolve(closed);
      });
    });
    expect(code).toBe(1011);
    expect((await server.metrics.connectionsDropped.get()).values).toEqual([
      expect.objectContaining({ labels: { reason: 'upgrade_timeout' }, value: 1 }),
    ]);
  });

  it('closes a socket it cannot take in (the clock threw) with 1011, and keeps the process up', async () => {
    let broken = false;
    const { server, url } = await externalServer({
      // Read as the connection is set up (its frame budget starts from now), after the hook answered;
      // not by the address's budget of attempts, turned off.
      clock: () => (broken ? Number.NaN : Date.now()),
      authRateLimitPerAddressPerSecond: 0,
      authenticate: () => {
        broken = true;
        return { id: 'alice' };
      },
    });
    const ws = new WebSocket(url, [PROTOCOL_NAME]);
    ws.on('error', () => {});
    cleanups.push(() => ws.terminate());
    // Until 7 December 2026 the throw left the hook's answer as an unhandled rejection (which ends a Node
    // process by default), and the socket stayed open and paused, its deadline cleared, for ever.
    const code = await new Promise<number | undefined>((resolve) => {
      const bound = setTimeout(() => resolve(undefined), 3000);
      ws.on('close', (closed) => {
        clearTimeout(bound);
        resolve(closed);
      });
    });
    broken = false;
    expect(code).toBe(1011);
    expect((await server.metrics.handlerErrors.get()).values[0]?.value).toBe(1);
  });

  it("closes a socket of the server's own upgrades it cannot take in with 1011 too", async () => {
    let broken = false;
    const server = await ProgressServer.listen(
      {
        store: new MemoryProgressStore(),
        clock: () => (broken ? Number.NaN : Date.now()),
        authRateLimitPerAddressPerSecond: 0,
        authenticate: () => {
          broken = true;
          return { id: 'alice' };
        },
      },
      { port: 0, host: '127.0.0.1' },
    );
    cleanups.push(() => server.close({ timeoutMs: 200 }));
    const { port } = server.httpServer.address() as AddressInfo;
    const ws = new WebSocket(`ws://127.0.0.1:${port}/progress`, [PROTOCOL_NAME]);
    ws.on('error', () => {});
    cleanups.push(() => ws.terminate());
    // Until 7 December 2026 an HTTP 500 was written onto the socket already upgraded, which was then cut
    // (1006, what a network fault looks like), not closed with the server fault's 1011.
    const code = await new Promise<number | undefined>((resolve) => {
      const bound = setTimeout(() => resolve(undefined), 3000);
      ws.on('close', (closed) => {
        clearTimeout(bound);
        resolve(closed);
      });
    });
    broken = false;
    expect(code).toBe(1011);
  });

  it('closes sockets with 4008, running no hook, once their address spent its failed authentication attempts', async () => {
    let calls = 0;
    const { url } = await externalServer({
      authenticate: () => {
        calls += 1;
        return null;
      },
      authRateLimitPerAddressPerSecond: 1,
      clock: () => 1_800_000_000_000,
    });
    const codes: number[] = [];
    for (let i = 0; i < 52; i += 1) {
      const ws = new WebSocket(url, [PROTOCOL_NAME]);
      ws.on('error', () => {});
      cleanups.push(() => ws.terminate());
      codes.push(await new Promise<number>((resolve) => ws.on('close', resolve)));
    }
    // A burst of 50 seconds of 1/s: 50 refusals of the hook (4001), then none of it runs.
    expect(calls).toBe(50);
    expect(codes.slice(0, 50).every((code) => code === 4001)).toBe(true);
    expect(codes.slice(50)).toEqual([4008, 4008]);
  });

  it('closes a socket whose token parameter is repeated with 1008, running no hook', async () => {
    const tokens: string[] = [];
    const { url } = await externalServer({
      authenticateToken: (token) => {
        tokens.push(token);
        return { id: 'alice' };
      },
      tokenQueryParam: 'token',
    });
    const ws = new WebSocket(`${url}?token=a&token=b`, [PROTOCOL_NAME]);
    ws.on('error', () => {});
    cleanups.push(() => ws.terminate());
    // Before: the first was taken, and the socket opened as alice's (its hello came).
    const code = await new Promise<number | string>((resolve) => {
      ws.on('close', resolve);
      ws.on('message', (data) => resolve(String(data)));
    });
    expect(code).toBe(1008);
    expect(tokens).toEqual([]);
  });

  it('selects the newest subprotocol offered, as the server’s own upgrades do; none spoken: 4002', async () => {
    const { url } = await externalServer({ authenticate: () => ({ id: 'alice' }) });
    const open = (protocols: string[]) => {
      const ws = new WebSocket(url, protocols);
      ws.on('error', () => {});
      cleanups.push(() => ws.terminate());
      return ws;
    };
    for (const offered of [
      [PROTOCOL_NAME_V1, PROTOCOL_NAME],
      ['chat', PROTOCOL_NAME],
    ]) {
      const ws = open(offered);
      const hello = await new Promise<{ type: string; protocol: number }>((resolve) =>
        ws.once('message', (data) => resolve(JSON.parse(data.toString()))),
      );
      expect([offered, ws.protocol, hello.type, hello.protocol]).toEqual([
        offered,
        PROTOCOL_NAME,
        'hello',
        2,
      ]);
    }
    const refused = open(['chat']);
    expect(await new Promise<number>((resolve) => refused.on('close', resolve))).toBe(4002);
  });

  // Found by a review: the subprotocol selection the server set on the caller's WebSocketServer stayed
  // there after `close()` (which leaves that server to its caller): its next user, the application's own
  // handler or another server, had finishline's versions chosen over the protocol the client offered first.
  it('is left selecting subprotocols as it did before, once the server closed', async () => {
    const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
    await new Promise<void>((resolve) => wss.once('listening', () => resolve()));
    cleanups.push(() => new Promise((resolve) => wss.close(resolve)));
    const before = wss.options.handleProtocols;
    const server = new ProgressServer({ store: new MemoryProgressStore(), wss, authenticate: () => null });
    await server.close({ timeoutMs: 200 });
    const { port } = wss.address() as AddressInfo;
    const ws = new WebSocket(`ws://127.0.0.1:${port}/chat`, ['chat', PROTOCOL_NAME]);
    ws.on('error', () => {});
    cleanups.push(() => ws.terminate());
    await new Promise((resolve) => ws.once('open', resolve));
    expect(ws.protocol).toBe('chat');
    expect(wss.options.handleProtocols).toBe(before);
  });
});
