/**
 * Clients that stop reading (terminal re-sends piling up behind a full buffer; a peer that sends but never
 * answers pings) and the per-address cap on unauthenticated connections (a request whose body never
 * comes). Each was a bug found by a review on 3 December 2026; each test failed before its fix.
 */
import type { Socket } from 'node:net';
import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { PendingConnections } from './socket/pending-connections.js';
import { RawClient, sleep, startServer, type TestServer } from './testing/harness.js';

let env: TestServer | undefined;
const cleanups: Array<() => unknown> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  await env?.close();
  env = undefined;
});

/** The server side of every upgraded TCP socket (same object the acceptor gets). */
function captureUpgradedSockets(server: TestServer): Socket[] {
  const sockets: Socket[] = [];
  server.server.httpServer!.on('upgrade', (_request, socket) => sockets.push(socket as Socket));
  return sockets;
}

describe('clients that stop reading', () => {
  it('does not re-send terminal frames into a socket that is above the high-water mark', async () => {
    const highWaterMarkBytes = 64 * 1024;
    env = await startServer({
      highWaterMarkBytes,
      terminalRetry: { initialDelayMs: 20, maxDelayMs: 20 },
    });
    const raw = captureUpgradedSockets(env);
    const big = 'x'.repeat(15_000);
    const ids: string[] = [];
    for (let i = 0; i < 50; i += 1) {
      const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
      await task.complete({ result: { big } });
      ids.push(task.id);
    }
    const client = await RawClient.connect(env.wsUrl, { user: 'alice' });
    cleanups.push(() => client.ws.terminate());
    for (const [index, taskId] of ids.entries())
      client.send({ type: 'subscribe', id: `s${index}`, taskId, afterSeq: 0 });
    // The client stops reading (but keeps its socket open and keeps talking, as a stuck tab does).
    (client.ws as unknown as { _socket: Socket })._socket.pause();
    const keepTalking = setInterval(() => client.send({ type: 'ping', id: 'p' }), 100);
    cleanups.push(() => clearInterval(keepTalking));
    await sleep(1500);
    const first = raw[0]!.writableLength;
    await sleep(1500);
    const second = raw[0]!.writableLength;
    process.stdout.write(
      `[terminal re-sends] server-side buffered: ${first} B at 1.5 s, ${second} B at 3 s (HWM ${highWaterMarkBytes})\n`,
    );
    // Above the mark the writer must stop writing; re-sends of frames still sitting in the buffer are
    // duplicates that only grow it.
    expect(second).toBeLessThan(4 * highWaterMarkBytes + 512 * 1024);
  }, 20_000);

  it('terminates a peer that stops reading (no pong) even if it keeps sending frames', async () => {
    env = await startServer({ heartbeatIntervalMs: 100 });
    const client = await RawClient.connect(env.wsUrl, { user: 'alice', autoPong: false });
    cleanups.push(() => client.ws.terminate());
    const keepTalking = setInterval(() => client.send({ type: 'ping', id: 'p' }), 30);
    cleanups.push(() => clearInterval(keepTalking));
    await sleep(1500);
    // docs/protocol.md (Transport): "terminates a socket that misses a pong for one interval".
    expect(env.server.connectionCount).toBe(0);
  }, 20_000);
});

describe('the per-address cap on unauthenticated connections', () => {
  /** A TCP connection to the test server, once it is open. */
  async function connected(): Promise<Socket> {
    const { connect } = await import('node:net');
    return new Promise<Socket>((resolve, reject) => {
      const s = connect(env!.port, '127.0.0.1', () => resolve(s));
      s.on('error', reject);
    });
  }

  it('keeps counting a connection whose unauthenticated request never finishes its body', async () => {
    env = await startServer({ maxPendingConnectionsPerAddress: 3 });
    const sockets: Socket[] = [];
    for (let i = 0; i < 10; i += 1) {
      const socket = await connected();
      socket.on('error', () => {});
      socket.resume();
      // Headers of a request with a body that then trickles (or never comes): no credentials at all.
      socket.write('POST /progress/tasks/t1/cancel HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{');
      sockets.push(socket);
    }
    cleanups.push(() => {
      for (const socket of sockets) socket.destroy();
    });
    await sleep(1500);
    const open = sockets.filter((socket) => !socket.destroyed && socket.readyState === 'open').length;
    process.stdout.write(`[slow body] unauthenticated connections still open: ${open}/10 (cap 3)\n`);
    expect(open).toBeLessThanOrEqual(3);
  }, 20_000);

  it('counts a kept-alive connection again while a later request of it never finishes its body', async () => {
    // The first request (a probe's GET, no credentials needed) released the connection; a second request on
    // it whose body never comes was counted by nothing: the cap held each fresh connection, not this one.
    const { connect } = await import('node:net');
    env = await startServer({ maxPendingConnectionsPerAddress: 3 });
    const sockets: Socket[] = [];
    for (let i = 0; i < 10; i += 1) {
      const socket = await connected();
      socket.on('error', () => {});
      const answered = new Promise<void>((resolve) => {
        let text = '';
        const onData = (chunk: Buffer) => {
          text += chunk.toString('latin1');
          if (text.includes('{"ok":true}')) {
            socket.off('data', onData);
            resolve();
          }
        };
        socket.on('data', onData);
      });
      socket.write('GET /progress/healthz HTTP/1.1\r\nHost: x\r\n\r\n');
      await answered;
      socket.resume();
      socket.write('POST /progress/tasks/t1/cancel HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{');
      sockets.push(socket);
    }
    cleanups.push(() => {
      for (const socket of sockets) socket.destroy();
    });
    await sleep(1500);
    const open = sockets.filter((socket) => !socket.destroyed && socket.readyState === 'open').length;
    expect(open).toBeLessThanOrEqual(3);
    // The connections of requests that finished are not counted: a client's keep-alive stays open.
    const done = await connected();
    cleanups.push(() => done.destroy());
    done.resume();
    // Authenticated: an idle connection none of whose requests authenticated counts again (see below).
    done.write(
      'POST /progress/tasks/t1/cancel HTTP/1.1\r\nHost: x\r\nx-user: alice\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}',
    );
    await sleep(300);
    for (let i = 0; i < 5; i += 1) {
      const more = connect(env.port, '127.0.0.1');
      more.on('error', () => {});
      cleanups.push(() => more.destroy());
    }
    await sleep(500);
    expect(done.destroyed || done.readyState !== 'open').toBe(false);
  }, 20_000);

  it('counts an idle kept-alive connection none of whose requests authenticated, dropping the oldest', async () => {
    // A request that needs no credentials (the liveness probe) released its connection, which then stayed
    // uncounted while idle: a client repeating such a request on each of its connections held any number
    // of them, and their descriptors, past the cap.
    env = await startServer({ maxPendingConnectionsPerAddress: 3 });
    const probe = async (headers = ''): Promise<Socket> => {
      const socket = await connected();
      socket.on('error', () => {});
      cleanups.push(() => socket.destroy());
      const answered = new Promise<void>((resolve) => {
        let text = '';
        const onData = (chunk: Buffer) => {
          text += chunk.toString('latin1');
          if (/\r\n\r\n\{.*\}$/s.test(text)) {
            socket.off('data', onData);
            socket.resume();
            resolve();
          }
        };
        socket.on('data', onData);
      });
      socket.write(`GET /progress/livez HTTP/1.1\r\nHost: x\r\n${headers}\r\n`);
      await answered;
      return socket;
    };
    const isOpen = (socket: Socket) => !socket.destroyed && socket.readyState === 'open';
    // An authenticated client's kept-alive connection is not counted while idle.
    const trusted = await probe();
    trusted.write('GET /progress/tasks HTTP/1.1\r\nHost: x\r\nx-user: alice\r\n\r\n');
    await sleep(200);
    const idle: Socket[] = [];
    for (let i = 0; i < 6; i += 1) idle.push(await probe());
    await expect.poll(() => idle.map(isOpen)).toEqual([false, false, false, true, true, true]);
    expect(isOpen(trusted)).toBe(true);
  });

  it('counts an idle kept-alive connection again once a later request of it did not authenticate', async () => {
    // Trusted for good after one authenticated request, a connection kept alive by liveness probes (free of
    // credentials and rate-limit tokens) was never counted again: one valid credential held any number of
    // connections past the cap, one request each.
    env = await startServer({ maxPendingConnectionsPerAddress: 3 });
    const open = async (): Promise<{ socket: Socket; request(head: string): Promise<void> }> => {
      const socket = await connected();
      socket.on('error', () => {});
      cleanups.push(() => socket.destroy());
      let text = '';
      let answers = 0;
      socket.on('data', (chunk: Buffer) => {
        text += chunk.toString('latin1');
      });
      return {
        socket,
        async request(head) {
          answers += 1;
          socket.write(`${head}Host: x\r\n\r\n`);
          while ((text.match(/HTTP\/1\.1 \d{3}/g) ?? []).length < answers) await sleep(5);
        },
      };
    };
    const isOpen = (socket: Socket) => !socket.destroyed && socket.readyState === 'open';
    const held = await open();
    await held.request('GET /progress/tasks HTTP/1.1\r\nx-user: alice\r\n');
    await held.request('GET /progress/livez HTTP/1.1\r\n');
    const others: Socket[] = [];
    for (let i = 0; i < 3; i += 1) {
      const other = await open();
      await other.request('GET /progress/livez HTTP/1.1\r\n');
      others.push(other.socket);
    }
    await expect.poll(() => [held.socket, ...others].map(isOpen)).toEqual([false, true, true, true]);
  });

  it('counting the requests of a kept-alive connection adds no listener per request to its socket', async () => {
    env = await startServer();
    const accepted: Socket[] = [];
    env.server.httpServer!.on('connection', (socket: Socket) => accepted.push(socket));
    const socket = await connected();
    cleanups.push(() => socket.destroy());
    let text = '';
    socket.on('data', (chunk: Buffer) => {
      text += chunk.toString('latin1');
    });
    const post = async (n: number) => {
      socket.write(
        'POST /progress/tasks/t1/ack HTTP/1.1\r\nHost: x\r\nx-user: alice\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{"seq":1}',
      );
      while ((text.match(/HTTP\/1\.1 404/g) ?? []).length < n) await sleep(5);
    };
    await post(1);
    const server = accepted[0]!;
    const after1 = server.listenerCount('close');
    for (let n = 2; n <= 20; n += 1) await post(n);
    expect(server.listenerCount('close')).toBe(after1);
  }, 20_000);

  it('caps all addresses together, dropping the oldest pending connection of any address', () => {
    const evicted: Array<[string, string]> = [];
    const pending = new PendingConnections({
      maxPerAddress: 100,
      maxTotal: 3,
      onEvict: (address, cap) => evicted.push([address, cap]),
    });
    // One silent connection from each of five addresses (a botnet): under every per-address cap.
    const socketFrom = (remoteAddress: string) => Object.assign(new PassThrough(), { remoteAddress });
    const sockets = ['192.0.2.1', '192.0.2.2', '192.0.2.3', '192.0.2.4', '192.0.2.5'].map(socketFrom);
    for (const socket of sockets) pending.add(socket);
    expect(pending.size).toBe(3);
    expect(sockets.map((socket) => socket.destroyed)).toEqual([true, true, false, false, false]);
    expect(evicted).toEqual([
      ['192.0.2.1', 'total'],
      ['192.0.2.2', 'total'],
    ]);
    // A released (authenticated) connection frees its place: the next one drops nobody.
    pending.release(sockets[2] as PassThrough);
    pending.add(socketFrom('192.0.2.6'));
    expect(pending.size).toBe(3);
    expect(evicted).toHaveLength(2);
  });

  it('counts the addresses of one IPv6 /64 as one address: a client with a prefix cannot multiply the cap', async () => {
    // A home or cloud connection gets a whole /64 (2^64 addresses) and may send from any of them: per
    // single address, 1,000 silent connections from 1,000 of its addresses were all kept.
    const evicted: string[] = [];
    const pending = new PendingConnections({
      maxPerAddress: 3,
      maxTotal: 1000,
      onEvict: (address) => evicted.push(address),
    });
    const socket = (remoteAddress: string) => Object.assign(new PassThrough(), { remoteAddress });
    const attacker = Array.from({ length: 10 }, (_, i) => socket(`2001:db8:0:7:${(i + 1).toString(16)}::1`));
    for (const one of attacker) pending.add(one);
    expect(attacker.filter((one) => !one.destroyed)).toHaveLength(3);
    // The oldest went; written any way (zeros dropped, '::' elsewhere, upper case), the prefix is one.
    expect(attacker.slice(7).every((one) => !one.destroyed)).toBe(true);
    pending.add(socket('2001:0DB8:0000:0007:ffff:ffff:ffff:ffff'));
    expect(attacker[7]!.destroyed).toBe(true);
    // Another /64, IPv4 and IPv4-mapped clients keep their own counts.
    const others = ['2001:db8:0:8::1', '2001:db8::1', '198.51.100.7', '::ffff:198.51.100.8'].map(socket);
    for (const one of others) pending.add(one);
    expect(others.every((one) => !one.destroyed)).toBe(true);
    expect(new Set(evicted)).toEqual(new Set(['2001:db8:0:7::/64']));
  });
});
