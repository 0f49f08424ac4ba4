import { connect, createServer, type Server, type Socket } from 'node:net';
import type { AppendResult } from '@finishline/core';
import { ErrorCode, isProgressError } from '@finishline/core';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { PostgresProgressStore } from '../src/index.js';
import { eventually, pgUrl, Recorder, storeFixtures } from './support.js';

/**
 * The database restarts under a stream of appends: every connection of the store (its pool's and its
 * LISTEN connection) goes through a TCP proxy that the test stops (every socket reset, then connections
 * refused for a while) and starts again on the same port, as a restarting server does.
 */

const { admin, migrated, open } = storeFixtures('restart');

/** A TCP proxy to the test server: `down()` resets every connection and refuses new ones until `up()`. */
async function restartableProxy() {
  const target = new URL(pgUrl());
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let port = 0;
  const up = () =>
    new Promise<void>((resolve) => {
      const listening = createServer((socket) => {
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
        upstream.pipe(socket);
      });
      server = listening;
      listening.listen(port, '127.0.0.1', () => {
        port = (listening.address() as { port: number }).port;
        resolve();
      });
    });
  await up();
  const url = new URL(pgUrl());
  url.hostname = '127.0.0.1';
  url.port = String(port);
  return {
    url: url.toString(),
    sockets,
    up,
    async down() {
      const stopping = server;
      server = undefined;
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => stopping?.close(resolve));
    },
  };
}

describe('a database restart under a stream of appends', () => {
  it('acknowledges only committed appends, rejects the others with store_unavailable, publishes each committed seq once, and recovers', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    const proxy = await restartableProxy();
    const pool = new pg.Pool({ connectionString: proxy.url, max: 4, idleTimeoutMillis: 0 });
    pool.on('error', () => {});
    try {
      const schema = await migrated();
      const listenName = `restart-listen-${schema}`;
      const store = await PostgresProgressStore.open({
        pool,
        schema,
        migrate: false,
        listenClient: { connectionString: proxy.url, application_name: listenName },
        reconnect: { initialDelayMs: 20, maxDelayMs: 100 },
        watermarkIntervalMs: 100,
      });
      // Not behind the proxy: it hears by NOTIFY what the store commits, and by its re-read nothing more.
      const observer = await open({ schema });
      const own = new Recorder(store);
      const heard = new Recorder(observer);
      const ids = ['a', 'b', 'c'];
      for (const id of ids) await store.createTask({ id, owner: 'alice', kind: 'k' });

      const outcomes: { key: string; outcome: AppendResult | unknown }[] = [];
      const pending: Promise<unknown>[] = [];
      let running = true;
      const pump = (async () => {
        for (let n = 0; running; n++) {
          const key = `k${n}`;
          const append = store.append(ids[n % ids.length] as string, { type: 'item', key, ok: true });
          pending.push(
            append.then(
              (result) => outcomes.push({ key, outcome: result }),
              (error: unknown) => outcomes.push({ key, outcome: error }),
            ),
          );
          // A few appends per turn: batches of several tasks.
          if (n % 4 === 3) await new Promise((resolve) => setTimeout(resolve, 2));
        }
      })();
      const rejected = () => outcomes.filter((entry) => isProgressError(entry.outcome)).length;
      await eventually('appends commit', () => outcomes.length >= 40);
      await proxy.down();
      await eventually('appends are refused while the database is down', () => rejected() >= 20);
      await proxy.up();
      const settledBefore = outcomes.length;
      await eventually(
        'appends commit again',
        () => outcomes.slice(settledBefore).filter((entry) => !isProgressError(entry.outcome)).length >= 40,
      );
      running = false;
      await pump;
      await Promise.all(pending);

      const { rows } = await admin.query<{ task_id: string; seq: number; key: string }>(
        `SELECT task_id, seq::int AS seq, body->'item'->>'key' AS key FROM ${schema}.events ORDER BY task_id, seq`,
      );
      const stored = new Map(rows.map((row) => [row.key, row]));
      expect(stored.size, 'no append stored twice').toBe(rows.length);
      for (const { key, outcome } of outcomes) {
        if (isProgressError(outcome)) {
          // Refused, or sent and lost with its connection (an unknown outcome: stored or not).
          expect(outcome.code, `${key}: ${outcome.message}`).toBe(ErrorCode.StoreUnavailable);
        } else {
          expect(outcome, `${key} settled with a ProgressError or a result`).toHaveProperty('event');
          expect(stored.get(key)?.seq, `${key} acknowledged, so stored at its seq`).toBe(
            (outcome as AppendResult).event.seq,
          );
        }
      }
      for (const id of ids) {
        const seqs = rows.filter((row) => row.task_id === id).map((row) => row.seq);
        expect(seqs, `${id} gap-free`).toEqual(seqs.map((_, index) => index + 1));
        // Both feeds publish every committed seq once, in order: those whose append was rejected too.
        await eventually(`${id} published`, () => own.has(id, seqs.length) && heard.has(id, seqs.length));
        expect(own.seqs(id), `${id} on the store's own feed`).toEqual(seqs);
        expect(heard.seqs(id), `${id} on the observer's feed`).toEqual(seqs);
      }
      await eventually('the LISTEN connection is back', () => store.changes.health().connected);
      await store.close();
      // Nothing of the store left on the database but the pool's connections, which are the caller's.
      const listening = async () =>
        (
          await admin.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1', [
            listenName,
          ])
        ).rows[0].n as number;
      await eventually('the LISTEN backend is gone', async () => (await listening()) === 0);
      await pool.end();
      await eventually('no connection left through the proxy', () => proxy.sockets.size === 0);
      await new Promise((resolve) => setImmediate(resolve));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
      if (!pool.ended) await pool.end();
      await proxy.down();
    }
  });
});
