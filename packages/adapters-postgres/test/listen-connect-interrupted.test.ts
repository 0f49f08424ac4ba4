import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { changeChannel, type PgListenClient, PostgresProgressStore } from '../src/index.js';
import { eventually, loopbackServer, pgUrl, settlesWithin, storeFixtures } from './support.js';

/**
 * A `LISTEN` connect that the store interrupts: `close()`, or `forgetSeqs()` replacing the connection,
 * while the client's `connect()` is in progress. pg 8 never settles a connect that `end()` interrupted
 * (the socket's end is then deliberate, so it calls the connect back neither with an error nor
 * without), so whatever waits for that connect alone waits forever. A server that accepted the
 * connection and has not answered yet (a failover, a restart, an overloaded host) keeps the connect in
 * progress for as long as a test needs, with a real `pg.Client`.
 */

const { admin, pool, migrated } = storeFixtures('connect');

/**
 * A TCP server that accepts connections, reads what they send and never answers; it closes a
 * connection when the client ends it, as Postgres does.
 */
async function silentServer() {
  let startups = 0;
  const server = await loopbackServer({}, (socket) => {
    socket.once('data', () => {
      startups += 1;
    });
  });
  return {
    url: server.url,
    /** Clients whose startup message arrived: their `connect()` is in progress. */
    startups: () => startups,
    /** Connections not closed yet. */
    open: () => server.sockets.size,
    close: () => server.close(),
  };
}

/**
 * What `opening` came to within 5 s: 'opened' (the store, closed again), its error, or 'still waiting'.
 */
async function openedWithin5s(opening: Promise<PostgresProgressStore>): Promise<unknown> {
  const outcome = opening.then(
    (store) => store.close().then(() => 'opened'),
    (error: unknown) => error,
  );
  let timer: ReturnType<typeof setTimeout> | undefined;
  const waited = new Promise((resolve) => {
    timer = setTimeout(() => resolve('still waiting'), 5000);
  });
  try {
    return await Promise.race([outcome, waited]);
  } finally {
    clearTimeout(timer);
  }
}

const servers: Array<{ close(): Promise<void> }> = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => server.close()));
});

/**
 * A store whose `LISTEN` clients connect to the test server until `silence()` is called, and to a
 * silent server from then on. Not closed by the fixtures: a close that never returns would hold the
 * cleanup too.
 */
async function storeWithSilenceableListener() {
  const schema = await migrated();
  const silent = await silentServer();
  servers.push(silent);
  let silenced = false;
  const factory = (): PgListenClient =>
    new pg.Client({ connectionString: silenced ? silent.url : pgUrl() }) as unknown as PgListenClient;
  const store = await PostgresProgressStore.open({
    pool: pool(),
    migrate: false,
    schema,
    listenClient: factory,
    reconnect: { initialDelayMs: 5, maxDelayMs: 20 },
  });
  return {
    store,
    silent,
    /** Makes the listener reconnect to the silent server, and resolves once that connect is in progress. */
    async reconnectToSilence() {
      silenced = true;
      await admin.query('SELECT pg_terminate_backend($1)', [store.changes.health().listenerPid]);
      await eventually('the reconnect is connecting to the silent server', () => silent.startups() > 0);
    },
  };
}

describe('a LISTEN connect in progress', () => {
  it('does not hold close(): it returns, and the client of the connect is ended', async () => {
    const { store, silent, reconnectToSilence } = await storeWithSilenceableListener();
    await reconnectToSilence();

    expect(await settlesWithin(store.close()), 'store.close() during the connect').toBe('closed');
    await eventually('the interrupted client closes its connection', () => silent.open() === 0);
  });

  it('replaced by forgetSeqs() is not left pending: a close() right after returns', async () => {
    const { store, silent, reconnectToSilence } = await storeWithSilenceableListener();
    await reconnectToSilence();

    // The replaced connect's client is ended at once; close() runs before the replacement starts, so
    // the only connect it could wait for is the replaced one.
    store.changes.forgetSeqs();
    expect(await settlesWithin(store.close()), 'store.close() after the connect was replaced').toBe('closed');
    await eventually('the replaced client closes its connection', () => silent.open() === 0);
  });
});

describe('open() against a LISTEN host that never answers', () => {
  it('rejects with store_unavailable after listenConnectTimeoutMs, whatever watermarkIntervalMs is', async () => {
    // The connect was bounded by 30 watermark intervals: 30 s by default, 30 h with an hourly watermark,
    // during which a server starting against a black-holed LISTEN host waited with no error.
    const schema = await migrated();
    const silent = await silentServer();
    servers.push(silent);
    const opening = PostgresProgressStore.open({
      pool: pool(),
      migrate: false,
      schema,
      listenClient: () => new pg.Client({ connectionString: silent.url }) as unknown as PgListenClient,
      watermarkIntervalMs: 3_600_000,
      listenConnectTimeoutMs: 200,
    });
    // A liveness bound, not a timing assertion: the open fails after 200 ms, or waits for an hour and more.
    const settled = await openedWithin5s(opening);
    expect(settled).toMatchObject({ code: 'store_unavailable' });
    expect((settled as Error).message).toMatch(/did not answer its connect within 200 ms/);
    await eventually('the abandoned client closes its connection', () => silent.open() === 0);
  });
});

describe('a LISTEN reconnect after many failed attempts', () => {
  it('waits for a connect that is never answered a bounded multiple of listenConnectTimeoutMs, then recovers', async () => {
    // Each failed attempt since the last success lengthened the next one's wait by one more
    // listenConnectTimeoutMs (and a re-read statement's by 30 watermark intervals), without end: after an
    // outage of many quickly refused attempts (an hour of them at the 10 s backoff is 360), one connect
    // that then hung, to a host that accepts and never answers, held the reconnect 360 times as long,
    // well after the database was back.
    const schema = await migrated();
    const silent = await silentServer();
    servers.push(silent);
    // A port nothing listens on: each connect is refused at once.
    const refusing = await loopbackServer({}, () => {});
    const refusedUrl = refusing.url;
    await refusing.close();
    let mode: 'up' | 'refused' | 'silent' = 'up';
    const urls = { refused: refusedUrl, silent: silent.url };
    // Connected and listening before the store asks for them: a new connection to a loaded host (CI's)
    // missed the 20 ms given to its connect and LISTEN, which failed open(). Only the connects to the
    // test's servers are the store's own.
    const channel = changeChannel(schema);
    const ready: PgListenClient[] = [];
    // Those the store did not take are ended after the test, passed or not.
    servers.push({
      async close() {
        await Promise.all(ready.splice(0).map((client) => client.end()));
      },
    });
    const readyClient = async () => {
      const client = new pg.Client({ connectionString: pgUrl() });
      await client.connect();
      await client.query(`LISTEN ${pg.escapeIdentifier(channel)}`);
      const query = client.query.bind(client) as (text: string, values?: unknown[]) => Promise<unknown>;
      Object.assign(client, {
        connect: async () => {},
        query: async (text: string, values?: unknown[]) =>
          text.startsWith('LISTEN') ? { rows: [] } : query(text, values),
      });
      ready.push(client as unknown as PgListenClient);
    };
    await readyClient();
    const store = await PostgresProgressStore.open({
      pool: pool(),
      migrate: false,
      schema,
      listenClient: () =>
        mode === 'up'
          ? (ready.shift() ?? (new pg.Client({ connectionString: pgUrl() }) as unknown as PgListenClient))
          : (new pg.Client({ connectionString: urls[mode] }) as unknown as PgListenClient),
      listenConnectTimeoutMs: 20,
      reconnect: { initialDelayMs: 1, maxDelayMs: 1 },
    });
    try {
      mode = 'refused';
      await admin.query('SELECT pg_terminate_backend($1)', [store.changes.health().listenerPid]);
      await eventually('300 refused attempts', () => store.changes.health().failedAttempts >= 300);
      await readyClient();
      mode = 'silent';
      const startups = silent.startups();
      await eventually('a connect to the silent server', () => silent.startups() > startups);
      mode = 'up';
      // A liveness bound, not a timing assertion: the hung connect is given up after a bounded multiple of
      // 20 ms, or after 300 × 20 ms and more.
      await eventually('the listener reconnects', () => store.changes.health().connected, 3000);
    } finally {
      await store.close();
    }
  });
});

describe('a listenClient factory that never settles', () => {
  it('fails open() with store_unavailable after listenConnectTimeoutMs, and ends a client it gives later', async () => {
    const schema = await migrated();
    let give: (client: PgListenClient) => void = () => {};
    const late = new Promise<PgListenClient>((resolve) => {
      give = resolve;
    });
    const opening = PostgresProgressStore.open({
      pool: pool(),
      migrate: false,
      schema,
      listenClient: () => late,
      listenConnectTimeoutMs: 200,
    });
    // A liveness bound, not a timing assertion: the open fails after 200 ms, or waits for ever.
    const settled = await openedWithin5s(opening);
    expect(settled).toMatchObject({ code: 'store_unavailable' });
    expect((settled as Error).message).toMatch(
      /did not answer its client factory \(listenClient\) within 200 ms/,
    );
    let ended = 0;
    give({
      end: async () => {
        ended += 1;
      },
    } as unknown as PgListenClient);
    await eventually('the client given too late is ended', () => ended === 1);
  });

  it('does not hold close() while a reconnect waits for it', async () => {
    const schema = await migrated();
    let hang = false;
    let asked = 0;
    const store = await PostgresProgressStore.open({
      pool: pool(),
      migrate: false,
      schema,
      listenClient: () => {
        if (!hang) return new pg.Client({ connectionString: pgUrl() }) as unknown as PgListenClient;
        asked += 1;
        return new Promise<PgListenClient>(() => {});
      },
      reconnect: { initialDelayMs: 5, maxDelayMs: 20 },
    });
    hang = true;
    await admin.query('SELECT pg_terminate_backend($1)', [store.changes.health().listenerPid]);
    await eventually('the reconnect waits for the factory', () => asked > 0);
    expect(await settlesWithin(store.close()), 'store.close() while the factory hangs').toBe('closed');
  });
});

describe('a listenClient factory that returns no pg client', () => {
  it('fails open() with invalid_input, naming the factory', async () => {
    const schema = await migrated();
    await expect(
      PostgresProgressStore.open({
        pool: pool(),
        migrate: false,
        schema,
        listenClient: () => ({}) as unknown as PgListenClient,
      }),
    ).rejects.toMatchObject({ code: 'invalid_input', message: /listenClient factory returned no pg client/ });
  });

  it('leaves no rejection unhandled on a reconnect, whatever the client it returns', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const schema = await migrated();
      let asked = 0;
      // Not a client, then a client whose connect fails and whose end() answers no promise.
      const wrong = [
        () => ({}),
        () => ({
          connect: () => Promise.reject(new Error('refused')),
          query: () => Promise.reject(new Error('not connected')),
          on: () => {},
          end: () => undefined,
        }),
      ];
      const store = await PostgresProgressStore.open({
        pool: pool(),
        migrate: false,
        schema,
        listenClient: () => {
          if (asked === 0) {
            asked += 1;
            return new pg.Client({ connectionString: pgUrl() }) as unknown as PgListenClient;
          }
          asked += 1;
          return (wrong[asked % 2] as () => unknown)() as PgListenClient;
        },
        reconnect: { initialDelayMs: 5, maxDelayMs: 5 },
      });
      await admin.query('SELECT pg_terminate_backend($1)', [store.changes.health().listenerPid]);
      await eventually('the reconnect asked the factory several times', () => asked > 6);
      expect(await settlesWithin(store.close()), 'store.close()').toBe('closed');
      await new Promise((resolve) => setImmediate(resolve));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });
});
