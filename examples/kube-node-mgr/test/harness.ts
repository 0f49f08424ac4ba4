// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { TaskView } from '@finishline/core';
import { SqliteProgressStore } from '@finishline/sqlite';
import Database from 'better-sqlite3';
import { type App, type AppOptions, createApp } from '../src/server/app.js';
import { AppDb } from '../src/server/app-db.js';
import { hashPassword, SessionManager } from '../src/server/auth.js';
import { DemoCluster, type DemoClusterOptions } from '../src/server/demo-cluster.js';
import { KubeNodes, loadKubeConfig } from '../src/server/kube-nodes.js';

/** A demo cluster, an app on SQLite (in memory) and two users, each on port 0. */
export interface Harness {
  cluster: DemoCluster;
  app: App;
  base: string;
  store: SqliteProgressStore;
  db: AppDb;
  /** The connection under {@link Harness.db} (tests add triggers to it). */
  sqlite: Database.Database;
  close(): Promise<void>;
}

/** Users of the tests (password = username): two operators, a viewer and an admin. */
export const USERS = ['alice', 'bob', 'victor', 'ada'] as const;

const ROLE_OF = { alice: 'operator', bob: 'operator', victor: 'viewer', ada: 'admin' } as const;
const users = USERS.map((u) => ({ username: u, passwordHash: hashPassword(u), role: ROLE_OF[u] }));

export async function startHarness(
  options: {
    cluster?: DemoClusterOptions;
    app?: Partial<AppOptions>;
    /** A database file for the store and the app's tables, which another harness may share (a replica). */
    file?: string;
  } = {},
): Promise<Harness> {
  const cluster = new DemoCluster(options.cluster);
  const url = await cluster.listen(0);
  const file = options.file ?? ':memory:';
  const store = new SqliteProgressStore({ database: file });
  const sqlite = new Database(file);
  const db = await AppDb.sqlite(sqlite);
  const app = createApp({
    store,
    db,
    nodes: new KubeNodes(loadKubeConfig({ type: 'server', url })),
    sessions: new SessionManager({ secret: 'test-secret-test-secret', ttlMs: 3600_000, users, db }),
    concurrency: 3,
    ...options.app,
  });
  await new Promise<void>((resolve) => app.server.listen(0, '127.0.0.1', () => resolve()));
  const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  return {
    cluster,
    app,
    base,
    store,
    db,
    sqlite,
    async close() {
      await app.close();
      await db.close();
      await store.close();
      await cluster.close();
    },
  };
}

/** An app logger that keeps the messages of its errors in `errors` and drops the rest. */
export function errorRecorder(): { errors: string[]; logger: NonNullable<AppOptions['logger']> } {
  const errors: string[] = [];
  const logger = {
    debug: () => {},
    info: () => {},
    warn: () => {},
    error: (_obj: unknown, msg?: string) => errors.push(msg ?? ''),
  };
  return { errors, logger };
}

/** A logged-in user: its cookie and CSRF token, and helpers that send them. */
export interface Client {
  cookie: string;
  csrf: string;
  get(path: string): Promise<{ status: number; body: any }>;
  post(path: string, body: unknown, headers?: Record<string, string>): Promise<{ status: number; body: any }>;
}

/** The raw login request (tests of refusals and cookies look at the response itself). */
export function postLogin(
  base: string,
  username: string,
  password: string,
  headers: Record<string, string> = {},
): Promise<globalThis.Response> {
  return fetch(`${base}/api/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ username, password }),
  });
}

/**
 * A POST of exactly `body` (its bytes as given) with the client's cookie, Origin and CSRF token, and `headers`
 * besides: the whole response, for tests that look at its headers or send a body {@link Client.post} would
 * encode.
 */
export function postAs(
  client: Pick<Client, 'cookie' | 'csrf'>,
  base: string,
  path: string,
  body: string,
  headers: Record<string, string> = {},
): Promise<globalThis.Response> {
  return fetch(`${base}${path}`, {
    method: 'POST',
    headers: {
      cookie: client.cookie,
      origin: base,
      'content-type': 'application/json',
      'x-csrf-token': client.csrf,
      ...headers,
    },
    body,
  });
}

/** Signs in; `headers` go with the sign-in and every later call (a proxy's `X-Forwarded-Proto`). */
export async function login(
  base: string,
  username: string,
  password = username,
  headers: Record<string, string> = {},
): Promise<Client> {
  const res = await postLogin(base, username, password, headers);
  if (res.status !== 200) throw new Error(`login ${username}: ${res.status}`);
  const setCookie = res.headers.get('set-cookie') ?? '';
  const cookie = setCookie.split(';')[0] ?? '';
  const { csrfToken } = (await res.json()) as { csrfToken: string };
  const call = async (path: string, init: RequestInit & { headers: Record<string, string> }) => {
    const r = await fetch(`${base}${path}`, { ...init, headers: { ...headers, ...init.headers } });
    const text = await r.text();
    return { status: r.status, body: text === '' ? null : JSON.parse(text) };
  };
  return {
    cookie,
    csrf: csrfToken,
    get: (path) => call(path, { headers: { cookie } }),
    post: (path, body, extra = {}) =>
      call(path, {
        method: 'POST',
        // A browser sends its Origin on every POST; the server refuses a cookie without one.
        headers: {
          cookie,
          origin: base,
          'content-type': 'application/json',
          'x-csrf-token': csrfToken,
          ...extra,
        },
        body: JSON.stringify(body),
      }),
  };
}

/** Waits (by polling the HTTP API) until the task ended; returns its view and its item events. */
export async function waitForTask(client: Client, taskId: string): Promise<{ task: TaskView; items: any[] }> {
  for (;;) {
    const { status, body } = await client.get(`/progress/tasks/${encodeURIComponent(taskId)}`);
    if (status !== 200) throw new Error(`task ${taskId}: ${status} ${JSON.stringify(body)}`);
    if (body.task.status !== 'running') break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const { body } = await client.get(
    `/progress/tasks/${encodeURIComponent(taskId)}/events?afterSeq=0&limit=1000`,
  );
  return { task: body.task, items: body.events.filter((e: { type: string }) => e.type === 'item') };
}

/** A raw WebSocket upgrade request; resolves with the HTTP status (101 when accepted). */
export function upgradeStatus(base: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${base}/progress`, {
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
        ...headers,
      },
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve(res.statusCode ?? 0);
    });
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
}

/**
 * A reverse proxy that passes plain HTTP through (streaming) and answers every upgrade with 502: the
 * client falls back to HTTP. `seen` counts the upgrades and streams and keeps the status of each ack; the
 * proxy's close is pushed onto `cleanups`.
 */
export async function upgradeRefusingProxy(
  targetPort: number,
  cleanups: Array<() => Promise<unknown> | unknown>,
) {
  const seen = { upgrades: 0, streams: 0, acks: [] as number[] };
  const proxy = http.createServer((req, res) => {
    if (req.url?.endsWith('/stream')) seen.streams += 1;
    const ack = req.url?.endsWith('/ack') === true;
    const upstream = http.request(
      { host: '127.0.0.1', port: targetPort, path: req.url, method: req.method, headers: req.headers },
      (response) => {
        if (ack) seen.acks.push(response.statusCode ?? 0);
        // A stream cut at either end resets the other: a proxy swallows that (CI once saw an unhandled
        // ECONNRESET here fail the run after every test had passed).
        response.on('error', () => res.destroy());
        res.writeHead(response.statusCode ?? 502, response.headers);
        response.pipe(res);
      },
    );
    upstream.on('error', () => res.destroy());
    req.on('error', () => upstream.destroy());
    res.on('error', () => upstream.destroy());
    res.on('close', () => upstream.destroy());
    req.pipe(upstream);
  });
  proxy.on('upgrade', (_req, socket) => {
    seen.upgrades += 1;
    socket.on('error', () => socket.destroy());
    socket.end('HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n');
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', () => resolve()));
  cleanups.push(() => new Promise((resolve) => proxy.close(resolve)));
  return { port: (proxy.address() as AddressInfo).port, seen };
}
