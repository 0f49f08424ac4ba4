import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { MemoryProgressStore, PROTOCOL_NAME } from '@finishline/core';
import { RoundTripPool } from '@finishline/core/internal';
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { Principal } from '../auth.js';
import { Authenticator } from '../authenticator.js';
import { AckWriter } from '../hub/ack-writer.js';
import { FairReads } from '../hub/fair-reads.js';
import { StoreEpoch } from '../hub/store-epoch.js';
import { TaskHub } from '../hub/task-hub.js';
import { silentLogger } from '../logger.js';
import { ServerMetrics } from '../metrics.js';
import { resolveServerOptions } from '../options.js';
import { PrincipalLimits } from '../principal-limits.js';
import { RawClient, startServer } from '../testing/harness.js';
import { Connection } from './connection.js';

/**
 * The liveness check of `Connection.tick` (docs/protocol.md, Transport: the server "terminates a socket
 * that misses a pong for one interval, unless its send buffer shrank meanwhile: a client still reading a
 * backlog"), on a socket whose buffer and flushes the test drives: a real socket's buffer, refilled to the
 * high-water mark by the drain while a backlog is queued, is as large at a tick as at the ping whatever
 * the peer read.
 */

/** A `ws` socket whose buffer the test fills and empties: frames stay buffered until `flush`. */
class FakeSocket extends EventEmitter {
  readonly protocol = PROTOCOL_NAME;
  readyState: number = 1;
  bufferedAmount = 0;
  terminated = false;
  pings = 0;
  readonly #buffered: Array<{ bytes: number; sent: (error?: Error | null) => void }> = [];

  send(text: string, sent: (error?: Error | null) => void): void {
    this.bufferedAmount += text.length;
    this.#buffered.push({ bytes: text.length, sent });
  }

  /** The socket takes the oldest `count` buffered frames (the peer read that far). */
  flush(count: number): void {
    for (const frame of this.#buffered.splice(0, count)) {
      this.bufferedAmount -= frame.bytes;
      frame.sent();
    }
  }

  ping(): void {
    this.pings += 1;
  }

  close(): void {
    this.readyState = 2;
  }

  terminate(): void {
    this.terminated = true;
    this.readyState = 3;
  }
}

function connect(): { ws: FakeSocket; connection: Connection<Principal> } {
  const store = new MemoryProgressStore();
  const options = resolveServerOptions<Principal>({
    store,
    authenticate: () => ({ id: 'alice' }),
    logger: silentLogger,
  });
  const metrics = new ServerMetrics({ registry: undefined, prefix: 'test_', feed: store.changes });
  const shared = { store, logger: silentLogger, metrics };
  const reads = new FairReads({ maxConcurrent: 4, maxPerPrincipal: 1 });
  const ws = new FakeSocket();
  const connection = new Connection<Principal>(
    { ws: ws as unknown as WebSocket, request: {} as IncomingMessage, principal: { id: 'alice' } },
    {
      options,
      auth: new Authenticator<Principal>({
        authenticate: options.authenticate,
        authenticateToken: undefined,
        authorize: options.authorize,
        tokenQueryParam: false,
        logger: silentLogger,
      }),
      hub: new TaskHub({ ...shared, retryDelayMs: 1000, reads, maxReplayEvents: 1000 }),
      acks: new AckWriter({ ...shared, retryDelayMs: 1000 }),
      metrics,
      logger: silentLogger,
      limits: new PrincipalLimits({
        maxSockets: 10,
        maxSubscriptions: 100,
        ratePerSecond: 1000,
        clock: Date.now,
      }),
      epoch: new StoreEpoch(store, silentLogger),
      roundTrips: new RoundTripPool(),
    },
    { socketCount: () => 1, onClose: () => {}, onAuthenticated: () => {} },
  );
  return { ws, connection };
}

/** Frames from the client (answered with a pong each): a backlog in the socket's buffer. */
function backlog(ws: FakeSocket, frames: number): void {
  for (let i = 0; i < frames; i++) ws.emit('message', Buffer.from(JSON.stringify({ type: 'ping' })), false);
}

describe('the liveness check', () => {
  it('spares a peer that missed its pong while it read frames written before the ping, its buffer refilled', () => {
    const { ws, connection } = connect();
    backlog(ws, 20);
    connection.tick();
    expect(ws.pings).toBe(1);
    // The peer reads the frames ahead of the ping, not yet the ping; the drain refills the buffer to where
    // it was (modelled: as many bytes buffered as at the ping).
    const atPing = ws.bufferedAmount;
    ws.flush(5);
    ws.bufferedAmount = atPing;
    connection.tick();
    expect(ws.terminated).toBe(false);
    expect(ws.pings).toBe(2);
  });

  it('terminates a peer that missed its pong and took nothing written before the ping', () => {
    const { ws, connection } = connect();
    backlog(ws, 20);
    connection.tick();
    connection.tick();
    expect(ws.terminated).toBe(true);
  });

  it('terminates a peer that missed its pong with nothing ahead of the ping, whatever it took after it', () => {
    const { ws, connection } = connect();
    backlog(ws, 5);
    ws.flush(6);
    connection.tick();
    // Frames written after the ping and taken since: the peer may have read the ping, and did not answer.
    backlog(ws, 5);
    ws.flush(10);
    connection.tick();
    expect(ws.terminated).toBe(true);
  });
});

describe('the liveness check after an event-loop stall', () => {
  it('keeps a socket whose pong arrived while the server was stalled past the next tick', async () => {
    const heartbeatIntervalMs = 100;
    const env = await startServer({ heartbeatIntervalMs });
    try {
      const client = await RawClient.connect(env.wsUrl, { user: 'alice' });
      // The client answers the ping (ws writes the pong before emitting 'ping'), and then the process
      // stalls for longer than an interval, as a long GC pause or a CPU-starved container does: the pong
      // reaches the server's socket during the stall, unread. After it the timers phase runs the server's
      // tick before the poll phase reads that pong.
      let stalled = false;
      client.ws.on('ping', () => {
        if (stalled) return;
        stalled = true;
        const until = Date.now() + 3 * heartbeatIntervalMs;
        while (Date.now() < until) {
          // busy: the event loop is stalled
        }
      });
      // Two heartbeat frames after the stall: the server ticked at least twice since and kept the socket.
      const afterStall = (frame: { type: string }) => stalled && frame.type === 'heartbeat';
      const ticked = (async () => {
        await client.next(afterStall, { from: client.frames.length });
        await client.next(afterStall, { from: client.frames.length });
        return 'open';
      })();
      const outcome = await Promise.race([ticked, client.closed.then(({ code }) => `closed ${code}`)]);
      expect(outcome).toBe('open');
      expect(client.ws.readyState).toBe(WebSocket.OPEN);
      await client.close();
    } finally {
      await env.close();
    }
  });

  it('still terminates a socket that does not answer pings', async () => {
    const env = await startServer({ heartbeatIntervalMs: 20 });
    try {
      const client = await RawClient.connect(env.wsUrl, { user: 'alice', autoPong: false });
      const closed = await client.closed;
      expect(closed.code).toBe(1006);
    } finally {
      await env.close();
    }
  });
});
