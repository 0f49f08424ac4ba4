/**
 * The setup the server's socket tests share: one server per test and the raw clients it opened, all
 * closed after the test, and a check that every frame the server sent matched the protocol. Call
 * {@link useServerSession} once at the top of a test file.
 *
 * @module
 */
import { afterEach, expect } from 'vitest';
import { RawClient, serverFrameViolations, startServer, type TestServer } from './harness.js';

/** Options of {@link RawClient.connect}. */
export type ConnectOptions = Parameters<typeof RawClient.connect>[1];

/** The server and clients of the running test. */
export interface ServerSession {
  /** Starts the test's server (see {@link startServer}); it is closed after the test. */
  start(overrides?: Parameters<typeof startServer>[0]): Promise<TestServer>;
  /** The running test's server; throws when the test started none. */
  readonly env: TestServer;
  /** A raw client of the test's server, closed after the test. */
  connect(options?: ConnectOptions): Promise<RawClient>;
  /** Closes `client` after the test (a client made without {@link ServerSession.connect}). */
  track<C extends RawClient>(client: C): C;
  /** Runs `cleanup` after the test, once its clients and server are closed. */
  onCleanup(cleanup: () => Promise<void> | void): void;
}

/** Registers the shared `afterEach` of a test file and returns its session. */
export function useServerSession(): ServerSession {
  let env: TestServer | undefined;
  const clients: RawClient[] = [];
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await env?.close();
    env = undefined;
    for (const cleanup of cleanups.splice(0)) await cleanup();
    // Checked last, once every frame arrived and the cleanup ran.
    expect(serverFrameViolations.splice(0)).toEqual([]);
  });
  return {
    async start(overrides) {
      env = await startServer(overrides);
      return env;
    },
    get env(): TestServer {
      if (env === undefined) throw new Error('no server: call session.start() first');
      return env;
    },
    async connect(options) {
      const client = await RawClient.connect(this.env.wsUrl, options);
      clients.push(client);
      return client;
    },
    track(client) {
      clients.push(client);
      return client;
    },
    onCleanup(cleanup) {
      cleanups.push(cleanup);
    },
  };
}
