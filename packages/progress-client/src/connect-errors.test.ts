import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { ProgressError } from '@finishline/core';
import { ErrorCode, PROTOCOL_NAME } from '@finishline/core';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import type { WebSocketConstructorLike } from './options.js';
import { ProgressClient } from './progress-client.js';

const servers: Server[] = [];
const clients: ProgressClient[] = [];

afterEach(async () => {
  vi.unstubAllGlobals();
  await Promise.all(clients.splice(0).map((client) => client.close()));
  await Promise.all(
    servers.splice(0).map(
      (server) =>
        new Promise<void>((resolve) => {
          server.closeAllConnections();
          server.close(() => resolve());
        }),
    ),
  );
});

async function listen(onUpgrade?: (socket: Duplex) => void): Promise<number> {
  const server = createServer((_request, response) => response.writeHead(404).end());
  if (onUpgrade !== undefined) server.on('upgrade', (_request, socket) => onUpgrade(socket));
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

/** Fast retries so several attempts fit in a test; no HTTP fallback to keep the errors about the socket. */
function client(url: string, extra: Record<string, unknown> = {}): ProgressClient {
  const c = new ProgressClient({
    url,
    WebSocket: WebSocket as unknown as WebSocketConstructorLike,
    reconnect: { initialDelayMs: 5, maxDelayMs: 10 },
    httpFallbackAfterAttempts: 0,
    errorAfterAttempts: 2,
    ...extra,
  });
  clients.push(c);
  return c;
}

/** Collects the client's errors and counts its failed attempts until `count` errors arrived. */
async function errorsOf(
  c: ProgressClient,
  count: number,
): Promise<{ errors: ProgressError[]; attempts: number }> {
  const errors: ProgressError[] = [];
  let attempts = 0;
  c.on('state', (change) => {
    if (change.state === 'reconnecting' && change.delayMs !== undefined) attempts++;
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${errors.length} errors after 5 s`)), 5000);
    c.on('error', (error) => {
      errors.push(error);
      if (errors.length === count) {
        clearTimeout(timer);
        resolve();
      }
    });
    c.watch('task-1');
  });
  return { errors, attempts };
}

describe('a client that cannot connect says why, after errorAfterAttempts, and keeps retrying', () => {
  it('reports the HTTP status of an upgrade refused on a wrong path', async () => {
    const port = await listen((socket) => socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n'));
    const { errors, attempts } = await errorsOf(client(`ws://127.0.0.1:${port}/progres`), 2);
    // The first failed attempt is silent; the second and every later one speaks.
    expect(attempts).toBeGreaterThanOrEqual(3);
    expect(errors[0]?.code).toBe(ErrorCode.Unreachable);
    expect(errors[0]?.message).toContain(
      `ProgressClient: cannot connect to ws://127.0.0.1:${port}/progres (2 failed attempts in a row): ` +
        'the server answered the WebSocket upgrade with HTTP 404',
    );
    expect(errors[1]?.message).toContain('(3 failed attempts in a row)');
    expect(errors[0]?.cause).toBeInstanceOf(Error);
  });

  it('leaves the query string out of the URL it names (a token for tokenQueryParam would reach the logs)', async () => {
    const port = await listen((socket) =>
      socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n'),
    );
    const { errors } = await errorsOf(client(`ws://127.0.0.1:${port}/progress?access_token=s3cret-tok`), 1);
    expect(errors[0]?.code).toBe(ErrorCode.Unreachable);
    expect(errors[0]?.message).toContain(`cannot connect to ws://127.0.0.1:${port}/progress (`);
    expect(errors[0]?.message).not.toContain('s3cret-tok');
    expect(String((errors[0]?.cause as Error | undefined)?.message)).not.toContain('s3cret-tok');
  });

  it('reports a refused TCP connection', async () => {
    const port = await listen();
    await new Promise<void>((resolve) => servers.pop()?.close(() => resolve()));
    const { errors } = await errorsOf(client(`ws://127.0.0.1:${port}/progress`), 1);
    expect(errors[0]?.code).toBe(ErrorCode.Unreachable);
    expect(errors[0]?.message).toContain('connection refused (ECONNREFUSED)');
    expect((errors[0]?.cause as { code?: string } | undefined)?.code).toBe('ECONNREFUSED');
  });

  it('reports a TLS failure (wss:// on a plain HTTP server)', async () => {
    const port = await listen();
    const { errors } = await errorsOf(client(`wss://127.0.0.1:${port}/progress`), 1);
    expect(errors[0]?.code).toBe(ErrorCode.Unreachable);
    expect(errors[0]?.message).toMatch(
      /TLS handshake failed \([A-Z_]+\): a wss:\/\/ URL needs an HTTPS server/,
    );
  });

  it('reports a DNS failure', async () => {
    const { errors } = await errorsOf(client('ws://finishline-no-such-host.invalid/progress'), 1);
    expect(errors[0]?.message).toMatch(/DNS lookup failed \((ENOTFOUND|EAI_AGAIN)\)/);
  });

  it('reports a server that accepts the upgrade and never says hello', async () => {
    const http = createServer();
    servers.push(http);
    const wss = new WebSocketServer({ server: http, handleProtocols: () => PROTOCOL_NAME });
    await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
    const { port } = http.address() as AddressInfo;
    const { errors } = await errorsOf(client(`ws://127.0.0.1:${port}/progress`, { connectTimeoutMs: 50 }), 1);
    expect(errors[0]?.message).toContain('no hello from the server within connectTimeoutMs (50 ms)');
    for (const socket of wss.clients) socket.terminate();
    wss.close();
  });

  it('ends the client on an upgrade refused with 403, naming allowedOrigins', async () => {
    const port = await listen((socket) => socket.end('HTTP/1.1 403 Forbidden\r\n\r\n'));
    const c = client(`ws://127.0.0.1:${port}/progress`);
    const error = await new Promise<ProgressError>((resolve) => {
      c.on('error', resolve);
      c.watch('task-1');
    });
    expect(error.code).toBe(ErrorCode.Forbidden);
    expect(error.message).toBe(
      'The server refused the client: the server answered the WebSocket upgrade with HTTP 403 (the Origin ' +
        "is not in the server's allowedOrigins: behind a dev proxy, add the page's origin)",
    );
    expect(c.state).toBe('closed');
  });

  it('stays silent with errorAfterAttempts: 0', async () => {
    const port = await listen((socket) => socket.end('HTTP/1.1 404 Not Found\r\n\r\n'));
    const c = client(`ws://127.0.0.1:${port}/x`, { errorAfterAttempts: 0 });
    const errors: ProgressError[] = [];
    c.on('error', (error) => errors.push(error));
    let attempts = 0;
    await new Promise<void>((resolve) => {
      c.on('state', (change) => {
        if (change.state === 'reconnecting' && change.delayMs !== undefined && ++attempts === 4) resolve();
      });
      c.watch('task-1');
    });
    expect(errors).toEqual([]);
  });
});

describe("Node's built-in WebSocket", () => {
  /** Stands for undici's WebSocket: no static `Server`, ignores a third argument. */
  class BuiltinLike {
    static created = 0;
    readyState = 0;
    onopen: (() => void) | null = null;
    onmessage: (() => void) | null = null;
    onclose: ((event: { code: number; reason: string }) => void) | null = null;
    onerror: ((event: object) => void) | null = null;
    constructor() {
      BuiltinLike.created++;
      // What Node 20's built-in does on a 401: an `error` and no `close`.
      setTimeout(() => {
        this.readyState = 3;
        this.onerror?.({ type: 'error' });
      }, 1);
    }
    send(): void {}
    close(): void {}
  }

  it('is refused at construction when headers are given, with what to do instead', () => {
    vi.stubGlobal('WebSocket', BuiltinLike);
    expect(
      () => new ProgressClient({ url: 'ws://127.0.0.1:1/progress', headers: { cookie: 'sid=1' } }),
    ).toThrow(
      "ProgressClient: Node's built-in WebSocket cannot send upgrade headers (cookie): pass `WebSocket` from " +
        'the "ws" package (npm install ws), or authenticate with the `token` option (sent in the first frame)',
    );
    // `ws` passed explicitly, or the built-in with a token: accepted.
    clients.push(
      new ProgressClient({
        url: 'ws://127.0.0.1:1/progress',
        headers: { cookie: 'sid=1' },
        WebSocket: WebSocket as unknown as WebSocketConstructorLike,
      }),
      new ProgressClient({ url: 'ws://127.0.0.1:1/progress', token: 't' }),
    );
  });

  it('an attempt that fires only `error` fails at once, not after connectTimeoutMs', async () => {
    vi.stubGlobal('WebSocket', BuiltinLike);
    BuiltinLike.created = 0;
    const c = new ProgressClient({
      url: 'ws://127.0.0.1:1/progress',
      token: 't',
      connectTimeoutMs: 60_000,
      reconnect: { initialDelayMs: 5, maxDelayMs: 10 },
      httpFallbackAfterAttempts: 0,
      errorAfterAttempts: 2,
    });
    clients.push(c);
    const error = await new Promise<ProgressError>((resolve) => {
      c.on('error', resolve);
      c.watch('task-1');
    });
    expect(BuiltinLike.created).toBeGreaterThanOrEqual(2);
    expect(error.code).toBe(ErrorCode.Unreachable);
    expect(error.message).toContain('this implementation does not say why');
  });
});
