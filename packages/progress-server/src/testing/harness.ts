/**
 * Test support for the server's own tests: a real server over a memory store and a recording raw
 * client.
 *
 * @module
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ChangeFeed, ChangeListener, ServerFrame } from '@finishline/core';
import { MemoryProgressStore, PROTOCOL_NAME, PROTOCOL_NAME_V1 } from '@finishline/core';
import { decodeServerFrame } from '@finishline/core/internal';
import WebSocket from 'ws';
import type { Principal } from '../auth.js';
import type { ProgressServerOptions } from '../options.js';
import { ProgressServer } from '../progress-server.js';

/**
 * Test support for the server's own tests: a real server on port 0 over a memory store, and a raw `ws`
 * client that records every frame. Not part of the package's public entry.
 */

/** Reads the principal from an `x-user` header (tests only). */
export const headerAuth = (request: IncomingMessage): Principal | null => {
  const user = request.headers['x-user'];
  return typeof user === 'string' && user !== '' ? { id: user } : null;
};

/** Accepts tokens `token-<user>` (tests only). */
export const tokenAuth = (token: string): Principal | null =>
  token.startsWith('token-') ? { id: token.slice('token-'.length) } : null;

/**
 * Frames a server sent that a strict client would refuse (`decodeServerFrame` failed), across all
 * clients speaking the protocol. Test files assert it stays empty.
 */
export const serverFrameViolations: string[] = [];

/** Default bound of every wait in these tests: generous, since machines are noisy. */
export const WAIT_MS = 10_000;

export interface TestServer {
  server: ProgressServer;
  store: MemoryProgressStore;
  port: number;
  /** `ws://127.0.0.1:<port>/progress` */
  wsUrl: string;
  /** `http://127.0.0.1:<port>` */
  httpUrl: string;
  close(): Promise<void>;
}

/** Starts a server with header authentication on a free port. */
export async function startServer(
  overrides: Partial<ProgressServerOptions> & { store?: MemoryProgressStore } = {},
): Promise<TestServer> {
  const store = overrides.store ?? new MemoryProgressStore();
  const server = await ProgressServer.listen(
    { authenticate: headerAuth, ...overrides, store },
    { port: 0, host: '127.0.0.1' },
  );
  const port = (server.httpServer!.address() as AddressInfo).port;
  return {
    server,
    store,
    port,
    wsUrl: `ws://127.0.0.1:${port}/progress`,
    httpUrl: `http://127.0.0.1:${port}`,
    close: () => server.close({ timeoutMs: 1000 }),
  };
}

/**
 * A memory store whose epoch reads wait for `release` (never, unless called): a server's first read of
 * its store's epoch still under way. `epoch` is the store's epoch, read around the hold.
 */
export function epochHeldStore(): {
  store: MemoryProgressStore;
  release: () => void;
  epoch: Promise<string | undefined>;
} {
  const store = new MemoryProgressStore();
  let release: () => void = () => {};
  const held = new Promise<void>((resolve) => {
    release = resolve;
  });
  const getEpoch = store.getEpoch.bind(store);
  store.getEpoch = async () => {
    await held;
    return getEpoch();
  };
  return { store, release, epoch: getEpoch() };
}

/**
 * A memory store and its backup: writes given to `both` go to the two (the backup is a copy up to
 * there), later ones to the live store only; `restore()` puts the backup in the live store's place, as
 * an operator restoring a database would. The server sees one store throughout.
 */
export function restorableStore() {
  // A write given to both is stamped alike in the two, as a backup copies the rows: a task's `createdAt`
  // (its run) a millisecond apart would make the restored task another run of the id.
  let pinned: number | undefined;
  const clock = (): number => pinned ?? Date.now();
  const live = new MemoryProgressStore({ clock });
  const backup = new MemoryProgressStore({ clock });
  let current = live;
  const listeners = new Set<ChangeListener>();
  for (const store of [live, backup]) {
    store.changes.subscribe((change) => {
      if (store === current) for (const listener of listeners) listener(change);
    });
  }
  const changes: ChangeFeed = {
    subscribe(listener) {
      const own = (change: Parameters<ChangeListener>[0]) => listener(change);
      listeners.add(own);
      return () => listeners.delete(own);
    },
  };
  const store: MemoryProgressStore = new Proxy(live, {
    get(_target, property) {
      if (property === 'changes') return changes;
      const value = Reflect.get(current, property, current);
      return typeof value === 'function' ? value.bind(current) : value;
    },
  });
  return {
    store,
    async both(write: (store: MemoryProgressStore) => Promise<unknown>): Promise<void> {
      pinned = Date.now();
      try {
        await write(live);
        await write(backup);
      } finally {
        pinned = undefined;
      }
    },
    restore() {
      current = backup;
    },
  };
}

/** A frame as received, parsed but not validated (tests check what the server really sent). */
export type Received = ServerFrame & Record<string, unknown>;

/** A raw protocol client: sends JSON objects or raw text, records every frame it receives. */
export class RawClient {
  readonly ws: WebSocket;
  readonly frames: Received[] = [];
  readonly opened: Promise<void>;
  readonly closed: Promise<{ code: number; reason: string }>;
  #waiters: Array<{
    predicate: (frame: Received) => boolean;
    resolve: (frame: Received) => void;
    from: number;
  }> = [];

  constructor(
    url: string,
    options: {
      user?: string;
      headers?: Record<string, string>;
      protocols?: string[];
      autoPong?: boolean;
    } = {},
  ) {
    const headers = { ...(options.user === undefined ? {} : { 'x-user': options.user }), ...options.headers };
    this.ws = new WebSocket(url, options.protocols ?? [PROTOCOL_NAME], {
      headers,
      autoPong: options.autoPong ?? true,
    });
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', () => resolve());
      this.ws.once('error', reject);
      this.ws.once('unexpected-response', (_request, response) =>
        reject(new Error(`unexpected response ${response.statusCode}`)),
      );
    });
    this.opened.catch(() => {});
    this.closed = new Promise((resolve) => {
      this.ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    });
    this.ws.on('error', () => {});
    this.ws.on('message', (data) => {
      // Both versions: a version-1 frame is also valid for today's decoder (version 2 only added fields).
      if (this.ws.protocol === PROTOCOL_NAME || this.ws.protocol === PROTOCOL_NAME_V1) {
        const decoded = decodeServerFrame(data.toString());
        if (!decoded.ok)
          serverFrameViolations.push(`${decoded.error.message}: ${data.toString().slice(0, 200)}`);
      }
      let frame: Received;
      try {
        frame = JSON.parse(data.toString()) as Received;
      } catch {
        frame = { type: 'raw', data: data.toString() } as unknown as Received;
      }
      this.frames.push(frame);
      const index = this.frames.length - 1;
      this.#waiters = this.#waiters.filter((waiter) => {
        if (index >= waiter.from && waiter.predicate(frame)) {
          waiter.resolve(frame);
          return false;
        }
        return true;
      });
    });
  }

  /** Opens a client and waits for the connection (and, by default, the `hello` frame). */
  static async connect(
    url: string,
    options: {
      user?: string;
      headers?: Record<string, string>;
      protocols?: string[];
      autoPong?: boolean;
      hello?: boolean;
    } = {},
  ): Promise<RawClient> {
    const client = new RawClient(url, options);
    await client.opened;
    if (options.hello !== false) await client.next((frame) => frame.type === 'hello');
    return client;
  }

  send(frame: Record<string, unknown>): void {
    this.ws.send(JSON.stringify(frame));
  }

  sendRaw(data: string | Buffer, options: { binary?: boolean } = {}): void {
    this.ws.send(data, { binary: options.binary ?? false });
  }

  /**
   * The first frame (received so far or later) matching `predicate`, searching from index `from`
   * (default: all frames). Rejects after `timeoutMs`.
   */
  next(
    predicate: (frame: Received) => boolean,
    options: { from?: number; timeoutMs?: number } = {},
  ): Promise<Received> {
    const from = options.from ?? 0;
    const found = this.frames.slice(from).find(predicate);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((waiter) => waiter.resolve !== done);
        reject(
          new Error(
            `no matching frame within ${options.timeoutMs ?? WAIT_MS} ms; got ${JSON.stringify(this.frames.slice(-5))}`,
          ),
        );
      }, options.timeoutMs ?? WAIT_MS);
      const done = (frame: Received) => {
        clearTimeout(timer);
        resolve(frame);
      };
      this.#waiters.push({ predicate, resolve: done, from });
    });
  }

  /** Frames of `type` about `taskId` (events and snapshots), in arrival order. */
  about(taskId: string): Received[] {
    return this.frames.filter((frame) => {
      if (frame.type === 'event') return (frame.event as { taskId: string }).taskId === taskId;
      if (frame.type === 'snapshot') return (frame.task as { id: string }).id === taskId;
      if (frame.type === 'error') return frame.taskId === taskId;
      return false;
    });
  }

  /** A round trip through the server: everything the server sent before its pong has arrived. */
  async sync(): Promise<void> {
    const id = `sync-${Math.random().toString(36).slice(2)}`;
    this.send({ type: 'ping', id });
    await this.next((frame) => frame.type === 'pong' && frame.requestId === id);
  }

  close(): Promise<{ code: number; reason: string }> {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close();
    return this.closed;
  }
}

/** Seq of an event or snapshot frame. */
export function seqOf(frame: Received): number {
  if (frame.type === 'event') return (frame.event as { seq: number }).seq;
  if (frame.type === 'snapshot') return (frame.task as { seq: number }).seq;
  throw new Error(`frame ${frame.type} has no seq`);
}

/** Sends a raw upgrade request and returns the HTTP status and body of a refusal (101 when accepted). */
export function upgradeStatus(
  url: string,
  headers: Record<string, string>,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const request = httpRequest(url.replace(/^ws/, 'http'), {
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': Buffer.from('0123456789abcdef').toString('base64'),
        ...headers,
      },
    });
    request.on('upgrade', (_response, socket) => {
      socket.destroy();
      resolve({ status: 101, body: '' });
    });
    request.on('response', (response) => {
      let body = '';
      response.on('data', (chunk: Buffer) => {
        body += chunk.toString();
      });
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
    });
    request.on('error', reject);
    request.end();
  });
}

/** A promise and the function that resolves it: holds a mocked store call until the test lets it go. */
export function gate(): { promise: Promise<void>; open(): void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

/** Resolves after `ms` (for "nothing more arrives" checks, never for timing assertions). */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
