import { connect, createServer, type Socket } from 'node:net';
import { ErrorCode } from '@finishline/core';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { pgUrl, storeFixtures } from './support.js';

/**
 * A backend terminated just after it reported ready for queries (a server restart or failover ending every
 * session, `pg_terminate_backend` of a connection being opened) sends its FATAL right behind ReadyForQuery,
 * and both often arrive in one socket read. pg parses the whole read at once: the client is handed out, and
 * emits the FATAL as `error`, before any promise continues. Until 6 December 2026 the store added its
 * `error` listener once the pool's `connect` resolved, too late: the `error`, with no listener on the
 * client (pg-pool takes its own off before it hands a client out), crashed the process. Seen in a storm of
 * `pg_terminate_backend` under appends (12 crashes in 9 s); here a proxy puts a FATAL in the same write as
 * each new connection's first ReadyForQuery.
 */

const { migrated, open } = storeFixtures('fatal');

/** The ErrorResponse of a backend terminated by `pg_terminate_backend` or a fast shutdown. */
function terminatingMessage(): Buffer {
  const fields = Buffer.concat([
    ...[
      ['S', 'FATAL'],
      ['V', 'FATAL'],
      ['C', '57P01'],
      ['M', 'terminating connection due to administrator command'],
    ].map(([code, value]) => Buffer.from(`${code}${value}\0`)),
    Buffer.from([0]),
  ]);
  const header = Buffer.alloc(5);
  header.write('E', 0);
  header.writeInt32BE(4 + fields.length, 1);
  return Buffer.concat([header, fields]);
}

/**
 * A TCP proxy to the test server that, while `armed`, ends each new connection right after its first
 * ReadyForQuery, with the FATAL in the same write.
 */
async function terminatingProxy() {
  const target = new URL(pgUrl());
  const sockets = new Set<Socket>();
  const state = { armed: true, terminated: 0 };
  const server = createServer((socket) => {
    const upstream = connect(Number(target.port || 5432), target.hostname);
    for (const side of [socket, upstream]) {
      sockets.add(side);
      side.on('error', () => {});
      side.on('close', () => {
        sockets.delete(side);
        socket.destroy();
        upstream.destroy();
      });
    }
    socket.pipe(upstream);
    const armed = state.armed;
    let pending = Buffer.alloc(0);
    let ready = false;
    upstream.on('data', (chunk: Buffer) => {
      if (!armed || ready) {
        if (!ready) socket.write(chunk);
        return;
      }
      pending = Buffer.concat([pending, chunk]);
      // Backend messages: a type byte, then a length that counts itself. Whole ones before ReadyForQuery go
      // on as they come (authentication waits for the client's answers).
      let at = 0;
      while (at + 5 <= pending.length && at + 1 + pending.readInt32BE(at + 1) <= pending.length) {
        const end = at + 1 + pending.readInt32BE(at + 1);
        if (pending[at] === 0x5a /* 'Z', ReadyForQuery */) {
          ready = true;
          state.terminated += 1;
          socket.end(Buffer.concat([pending.subarray(0, end), terminatingMessage()]));
          upstream.destroy();
          return;
        }
        at = end;
      }
      socket.write(pending.subarray(0, at));
      pending = pending.subarray(at);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = new URL(pgUrl());
  url.hostname = '127.0.0.1';
  url.port = String((server.address() as { port: number }).port);
  return {
    url: url.toString(),
    state,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

describe('a pool connection terminated in the read that reported it ready', () => {
  it('fails the call that asked for it with store_unavailable, not the process; the next call gets a new connection', async () => {
    // Vitest reports an uncaught exception after the run; counted here, the test itself fails on one.
    const uncaught: unknown[] = [];
    const record = (error: unknown) => uncaught.push(error);
    process.on('uncaughtException', record);
    cleanups.push(async () => {
      process.off('uncaughtException', record);
    });
    const schema = await migrated();
    const writer = await open({ schema });
    await writer.createTask({ id: 'x', owner: 'alice', kind: 'k' });

    const proxy = await terminatingProxy();
    cleanups.push(() => proxy.close());
    const pool = new pg.Pool({ connectionString: proxy.url, max: 2, idleTimeoutMillis: 0 });
    pool.on('error', () => {});
    cleanups.push(() => pool.end());
    const store = await open({ schema, pool, listenClient: pgUrl() });

    const failed = store.append('x', { type: 'progress', message: 'lost with its connection' });
    await expect(failed).rejects.toMatchObject({ code: ErrorCode.StoreUnavailable });
    expect(proxy.state.terminated).toBeGreaterThan(0);

    proxy.state.armed = false;
    await expect(
      store.append('x', { type: 'progress', message: 'on a new connection' }),
    ).resolves.toMatchObject({
      event: { seq: 1 },
    });
    expect(uncaught, 'errors no listener took').toEqual([]);
    expect(pool.listenerCount('acquire'), "the store's listener is gone once no connect waits").toBe(0);
  });
});
