/**
 * The per-test server and raw sockets shared by the tests that talk to the server from docs/protocol.md
 * alone (raw-protocol-2, raw-protocol-claims, raw-protocol-doc-audit, reserved-ids): one server per test,
 * started with {@link RAW_SOCKET_SERVER_OPTIONS}, and every socket opened through the session closed
 * after the test, before the server. Not part of the package's public entry.
 *
 * @module
 */
import type { ProgressStore } from '@finishline/core';
import { afterEach } from 'vitest';
import { startServer, type TestServer } from './harness.js';
import { RAW_SOCKET_SERVER_OPTIONS, type RawHttpAnswer, rawHttp } from './raw-http.js';
import { type Frame, Raw } from './raw-socket.js';

export interface RawSession {
  /** The server of the running test, once started; `undefined` between tests. */
  env: TestServer | undefined;
  /** Sockets closed after the test; a test opening its own `Raw` pushes it here. */
  readonly clients: Raw[];
  /** Starts the test's server with the raw-socket options, `overrides` on top. */
  start(overrides?: Parameters<typeof startServer>[0]): Promise<TestServer>;
  /** A socket opened without credentials, its first frame not sent yet. */
  unauthenticated(protocols?: string[]): Promise<Raw>;
  /** Opens a socket, authenticates with an `auth` first frame (doc: Authentication 2) and waits for `hello`. */
  connect(token?: string, protocols?: string[]): Promise<Raw>;
  /** One request to the test's server, the whole answer read. */
  http(method: string, path: string, opts?: Parameters<typeof rawHttp>[3]): Promise<RawHttpAnswer>;
}

/** Registers the `afterEach` that closes the session's sockets and server; call once at module level. */
export function rawSession(): RawSession {
  const session: RawSession = {
    env: undefined,
    clients: [],
    async start(overrides = {}) {
      session.env = await startServer({ ...RAW_SOCKET_SERVER_OPTIONS, ...overrides });
      return session.env;
    },
    async unauthenticated(protocols) {
      const client = new Raw(session.env!.wsUrl, protocols === undefined ? {} : { protocols });
      session.clients.push(client);
      await client.open;
      return client;
    },
    async connect(token = 'alice', protocols) {
      const client = await session.unauthenticated(protocols);
      // An empty protocol (a client offering none) is version 1, as the document says.
      const version = client.ws.protocol === 'finishline.v2' ? 2 : 1;
      client.send({ type: 'auth', token, protocol: version });
      await client.next((f) => f.type === 'hello');
      return client;
    },
    http: (method, path, opts) => rawHttp(session.env!.httpUrl, method, path, opts),
  };
  afterEach(async () => {
    await Promise.all(session.clients.splice(0).map((c) => c.close()));
    await session.env?.close();
    session.env = undefined;
  });
  return session;
}

/** Matches an `error` frame of `code`. */
export const errorOf = (code: string) => (f: Frame) => f.type === 'error' && f.code === code;
/** Matches the `snapshot` frame of `taskId`. */
export const snapshotOf = (taskId: string) => (f: Frame) => f.type === 'snapshot' && f.task.id === taskId;
/** Matches the `event` frame of `taskId` at `seq`. */
export const eventAt = (taskId: string, seq: number) => (f: Frame) =>
  f.type === 'event' && f.event.taskId === taskId && f.event.seq === seq;

/** Holds `store`'s task reads (a task that loads slowly) until the returned function is called. */
export function holdTaskReads(store: ProgressStore): () => void {
  let release!: () => void;
  const held = new Promise<void>((resolve) => {
    release = resolve;
  });
  const getTask = store.getTask.bind(store);
  store.getTask = async (taskId) => {
    await held;
    return getTask(taskId);
  };
  return release;
}
