import { readFileSync } from 'node:fs';
import { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { MemoryProgressStore } from '@finishline/core';
import { Registry } from 'prom-client';
import { describe, expect, it, vi } from 'vitest';
import { compareTsdocDefaults } from '../../../scripts/tsdoc-defaults.mjs';
import { PROGRESS_SERVER_DEFAULTS } from './options.js';
import { ProgressServer } from './progress-server.js';
import { RawClient, startServer, upgradeStatus } from './testing/harness.js';

/** Metrics exposure, shutdown rules and option validation. */

const noAuth = (): null => null;

describe('metrics', () => {
  it('exposes the documented metrics on the registry with the prefix', async () => {
    const registry = new Registry();
    const env = await startServer({ registry, metricsPrefix: 'fl_test_' });
    try {
      expect(env.server.metrics.registry).toBe(registry);
      const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
      const client = await RawClient.connect(env.wsUrl, { user: 'alice' });
      client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
      await client.next((frame) => frame.type === 'snapshot');
      client.sendRaw('garbage');
      await client.next((frame) => frame.type === 'error');
      const text = await registry.metrics();
      for (const name of [
        'fl_test_sockets 1',
        'fl_test_subscriptions 1',
        'fl_test_resumes_total 0',
        'fl_test_unacked_terminal_events 0',
        'fl_test_frames_rejected_total{code="invalid_frame"} 1',
        'fl_test_snapshots_sent_total 1',
        'fl_test_terminal_ack_latency_seconds_count 0',
        'fl_test_safety_net_events_total 0',
      ]) {
        expect(text).toContain(name);
      }
      // The help an operator reads on /metrics: resumes of Server-Sent Events streams count too.
      expect(text).toMatch(/# HELP fl_test_resumes_total .*Server-Sent Events/);
      await client.close();
    } finally {
      await env.close();
    }
    // A caller's registry is left clean, so a new server can register the same names.
    expect(await registry.getMetricsAsJSON()).toEqual([]);
  });

  it("reports the change feed's safety-net count when the feed exposes one", async () => {
    const store = new MemoryProgressStore();
    let polled = 0;
    // The Postgres feed's name for the count.
    Object.defineProperty(store.changes, 'stats', { value: () => ({ missedByNotifications: polled }) });
    const server = new ProgressServer({ store, authenticate: () => null });
    try {
      polled = 3;
      expect(await server.metrics.registry.metrics()).toContain('finishline_safety_net_events_total 3');
      polled = 5;
      expect(await server.metrics.registry.metrics()).toContain('finishline_safety_net_events_total 5');
    } finally {
      await server.close({ timeoutMs: 100 });
    }
  });
});

describe('close()', () => {
  it('refuses upgrades and new tasks once closing, and is idempotent', async () => {
    const env = await startServer();
    const url = env.wsUrl;
    const closing = env.server.close({ timeoutMs: 500 });
    expect(env.server.close()).toBe(closing);
    await expect(env.server.tasks.create({ owner: 'a', kind: 'k' })).rejects.toMatchObject({
      code: 'closed',
    });
    await closing;
    await expect(upgradeStatus(url, { 'x-user': 'a' })).rejects.toThrow();
  });

  it('returns by its deadline even when the store hangs', async () => {
    const store = new MemoryProgressStore();
    const server = new ProgressServer({ store, authenticate: noAuth });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    store.append = () => new Promise(() => {});
    store.renewLease = () => new Promise(() => {});
    void server.leases.renewAll();
    await server.close({ timeoutMs: 100 });
    expect(task.signal.aborted).toBe(true);
  });

  it('never closes an http.Server it did not create', async () => {
    const { createServer } = await import('node:http');
    const httpServer = createServer();
    await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
    const server = new ProgressServer({
      store: new MemoryProgressStore(),
      server: httpServer,
      authenticate: noAuth,
    });
    await server.close({ timeoutMs: 100 });
    expect(httpServer.listening).toBe(true);
    expect(httpServer.listenerCount('upgrade')).toBe(0);
    await new Promise((resolve) => httpServer.close(resolve));
  });

  // Review of 6 December 2026: a second server on the same http.Server and path was taken, and both
  // answered every upgrade: each socket said hello and was destroyed (1006), and the client reconnected
  // for ever without an error.
  it('refuses a second server on the same http.Server and path until the first is closed', async () => {
    const { createServer } = await import('node:http');
    const httpServer = createServer();
    const store = new MemoryProgressStore();
    const first = new ProgressServer({ store, server: httpServer, authenticate: noAuth });
    expect(() => new ProgressServer({ store, server: httpServer, authenticate: noAuth })).toThrow(
      expect.objectContaining({
        code: 'invalid_input',
        message:
          'ProgressServer: another ProgressServer already serves WebSocket upgrades at /progress on this server: close() it first, or give this one another `path`',
      }),
    );
    expect(httpServer.listenerCount('upgrade')).toBe(1);
    const other = new ProgressServer({ store, server: httpServer, authenticate: noAuth, path: '/other' });
    await Promise.all([first.close({ timeoutMs: 100 }), other.close({ timeoutMs: 100 })]);
    const again = new ProgressServer({ store, server: httpServer, authenticate: noAuth });
    await again.close({ timeoutMs: 100 });
    expect(httpServer.listenerCount('upgrade')).toBe(0);
  });

  it.each([2 ** 31, -1, Number.NaN, 1.5])(
    'refuses timeoutMs %s with invalid_input, leaving the server open for a valid close()',
    async (timeoutMs) => {
      // Until 5 December 2026 a timeoutMs above 2^31 - 1 was taken, and the shutdown's timers, asked to
      // wait that long, fired after 1 ms (it stopped waiting at once); an invalid one was refused as the
      // result of the shutdown itself, which every later close() then returned: the server stayed open.
      const server = new ProgressServer({ store: new MemoryProgressStore(), authenticate: noAuth });
      await expect(server.close({ timeoutMs })).rejects.toMatchObject({
        code: 'invalid_input',
        message: expect.stringContaining('timeoutMs must be an integer from 0 to 2147483647'),
      });
      const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
      await server.close({ timeoutMs: 100 });
      expect(task.signal.aborted).toBe(true);
      await expect(server.tasks.create({ owner: 'a', kind: 'k' })).rejects.toMatchObject({ code: 'closed' });
    },
  );
});

/**
 * A default as the docs write it, in the option's unit: `10 s` and `5 minutes` in ms, `1 MiB` in bytes,
 * `10,000 entries` and `20/s, burst 1,000` by their first number.
 */
function statedNumber(text: string): number {
  const found = text.match(/^([\d,]+(?:\.\d+)?)\s*(ms|s|minutes|KiB|MiB)?\b/);
  if (found === null) return Number.NaN;
  const scale = { ms: 1, s: 1000, minutes: 60_000, KiB: 1024, MiB: 1024 * 1024 } as const;
  return (
    Number((found[1] as string).replaceAll(',', '')) * (found[2] ? scale[found[2] as keyof typeof scale] : 1)
  );
}

describe('options', () => {
  it('states in the TSDoc of ProgressServerOptions the defaults it has', () => {
    const source = readFileSync(new URL('./options.ts', import.meta.url), 'utf8');
    const { checked, wrong } = compareTsdocDefaults(source, PROGRESS_SERVER_DEFAULTS);
    expect(wrong).toEqual([]);
    expect(checked).toBeGreaterThanOrEqual(30);
  });

  it("has the defaults operations.md's settings table and the README's list of options state", () => {
    const doc = (path: string) => readFileSync(new URL(path, import.meta.url), 'utf8');
    const defaults: Record<string, unknown> = PROGRESS_SERVER_DEFAULTS;
    // `| \`sseStallTimeoutMs\` (server option) | 30 s | what it bounds |`
    const table = [
      ...doc('../../../docs/operations.md').matchAll(/^\| `(\w+)` \(server option\) \| ([^|]+) \|/gm),
    ];
    const readme = doc('../README.md');
    // "… among them some this README does not name: `backpressurePollMs` (10), …"
    const list = [...readme.slice(readme.indexOf('## Options')).matchAll(/`(\w+)` \((\d[^)]*)\)/g)];
    expect(table.length).toBeGreaterThanOrEqual(6);
    expect(list.length).toBeGreaterThanOrEqual(6);
    for (const [, name, value] of [...table, ...list]) {
      expect(statedNumber(value as string), name).toBe(defaults[name as string]);
    }
  });

  it('exports frozen defaults', () => {
    expect(Object.isFrozen(PROGRESS_SERVER_DEFAULTS)).toBe(true);
    expect(PROGRESS_SERVER_DEFAULTS).toMatchObject({
      path: '/progress',
      maxPayloadBytes: 65536,
      heartbeatIntervalMs: 15000,
      highWaterMarkBytes: 1048576,
      leaseTtlMs: 15000,
      maxReplayEvents: 1000,
      allowedOrigins: 'same-origin',
      tokenQueryParam: false,
    });
  });

  it('names the nearest known option when refusing an unknown one', () => {
    expect(
      () =>
        new ProgressServer({
          store: new MemoryProgressStore(),
          authenticate: noAuth,
          heartbeatMs: 5,
        } as never),
    ).toThrow('ProgressServer: unknown option "heartbeatMs" (did you mean `heartbeatIntervalMs`?)');
  });

  it('close() refuses an unknown option, naming the nearest, and leaves the server open', async () => {
    // `{ timeout: 30_000 }` closed within the default 5 s without a word.
    const server = new ProgressServer({ store: new MemoryProgressStore(), authenticate: noAuth });
    await expect(server.close({ timeout: 30_000 } as never)).rejects.toMatchObject({
      code: 'invalid_input',
      message: 'close: unknown option "timeout" (did you mean `timeoutMs`?)',
    });
    await server.tasks.create({ owner: 'alice', kind: 'k' });
    await server.close({ timeoutMs: 100 });
  });

  it('exports the defaults of listen() beside those of close()', async () => {
    // `ListenOptions` documented its defaults, but its defaults object was the one the entry left out.
    const entry = await import('./index.js');
    expect(entry.LISTEN_DEFAULTS).toEqual({
      headersTimeoutMs: 10_000,
      requestTimeoutMs: 30_000,
      backlog: 4096,
    });
    expect(Object.isFrozen(entry.LISTEN_DEFAULTS)).toBe(true);
  });

  it('listen() refuses an unknown option and a port out of range before it listens', async () => {
    // `{ prot: 8080 }` listened on a random port without a word.
    const options = { store: new MemoryProgressStore(), authenticate: noAuth };
    await expect(ProgressServer.listen(options, { prot: 8080 } as never)).rejects.toMatchObject({
      code: 'invalid_input',
      message: 'listen: unknown option "prot" (did you mean `port`?)',
    });
    await expect(ProgressServer.listen(options, { port: 70_000 })).rejects.toMatchObject({
      code: 'invalid_input',
      message: 'listen: port must be an integer from 0 to 65535, got 70000',
    });
    await expect(ProgressServer.listen(options, { backlog: 0 })).rejects.toMatchObject({
      code: 'invalid_input',
      message: 'listen: backlog must be an integer from 1 to 65535, got 0',
    });
  });

  it('listen() asks the kernel for a backlog of 4096 connections, or the one given', async () => {
    // With Node's 511, the storm of 10,000 sockets reconnecting at once overflowed the accept queue: 2,073 to
    // 12,331 connections dropped per run, each waiting 1 s or more for its TCP to send its SYN again; all
    // back in a median 6.1 s against 4.5 s with 4096 (docs/benchmarks-history.md, session 48).
    const original = Server.prototype.listen;
    const backlogs: unknown[] = [];
    const listen = vi.spyOn(Server.prototype, 'listen').mockImplementation(function (
      this: Server,
      ...args: unknown[]
    ) {
      backlogs.push((args[0] as { backlog?: unknown } | undefined)?.backlog);
      return original.apply(this, args as never);
    });
    try {
      const options = { store: new MemoryProgressStore(), authenticate: noAuth };
      const byDefault = await ProgressServer.listen(options, { host: '127.0.0.1' });
      const given = await ProgressServer.listen(options, { backlog: 100 });
      await Promise.all([byDefault.close(), given.close()]);
    } finally {
      listen.mockRestore();
    }
    expect(backlogs).toEqual([4096, 100]);
  });

  it('refuses an Express app as `server`, naming the http.Server to pass instead', () => {
    // `server: app` said "server must be an http.Server, got a function", not which server that is.
    const app = Object.assign(() => undefined, { on: () => undefined, listen: () => undefined });
    expect(
      () =>
        new ProgressServer({ store: new MemoryProgressStore(), authenticate: noAuth, server: app as never }),
    ).toThrow(
      expect.objectContaining({
        code: 'invalid_input',
        message: expect.stringContaining('what app.listen() returns, or http.createServer(app)'),
      }),
    );
  });

  it('httpHandler() refuses an unknown option, naming the nearest', async () => {
    // `{ basepath: '/api' }` served the API at the default path, every request to /api answered 404.
    const server = new ProgressServer({ store: new MemoryProgressStore(), authenticate: noAuth });
    expect(() => server.httpHandler({ basepath: '/api' } as never)).toThrow(
      'httpHandler: unknown option "basepath" (did you mean `basePath`?)',
    );
    await server.close({ timeoutMs: 0 });
  });

  it('says so when store is a promise (an open() without its await)', () => {
    const pending = Promise.resolve(new MemoryProgressStore());
    expect(() => new ProgressServer({ store: pending, authenticate: noAuth } as never)).toThrow(
      expect.objectContaining({
        code: 'invalid_input',
        message:
          'ProgressServer: store is a promise: pass the store it resolves to (`await PostgresProgressStore.open(…)`)',
      }),
    );
  });

  it('refuses options whose reading throws (a getter, a Proxy) with invalid_input naming the option', () => {
    // Until 8 December 2026 the getter's own error left the constructor without a code: `store` is read
    // before the options are resolved (for the promise check), and the options' reads were unguarded.
    const broke = new Error('getter broke');
    const getterStore = {
      authenticate: noAuth,
      get store(): never {
        throw broke;
      },
    };
    expect(() => new ProgressServer(getterStore as never)).toThrow(
      expect.objectContaining({
        code: 'invalid_input',
        message: 'ProgressServer: store threw: getter broke',
        cause: broke,
      }),
    );
    const proxy = new Proxy(
      { store: new MemoryProgressStore(), authenticate: noAuth },
      {
        get(target, key, receiver) {
          if (key === 'heartbeatIntervalMs') throw broke;
          return Reflect.get(target, key, receiver);
        },
      },
    );
    expect(() => new ProgressServer(proxy)).toThrow(
      expect.objectContaining({
        code: 'invalid_input',
        message: 'ProgressServer: heartbeatIntervalMs threw: getter broke',
      }),
    );
  });

  // The Origin header is compared as a string: an entry no browser sends (a trailing slash copied from
  // the address bar) was accepted and refused every upgrade from that page with 403.
  it.each([
    ['http://localhost:5173/', ': use "http://localhost:5173"'],
    ['HTTP://LOCALHOST:5173', ': use "http://localhost:5173"'],
    ['https://app.example.com:443', ': use "https://app.example.com"'],
    ['https://app.example.com/app', ': use "https://app.example.com"'],
    ['localhost:5173', ''],
    ['chrome-extension://abc/popup.html', ''],
  ])('refuses allowedOrigins entry %s, naming the origin a browser sends', (origin, fix) => {
    expect(
      () =>
        new ProgressServer({
          store: new MemoryProgressStore(),
          authenticate: noAuth,
          allowedOrigins: ['https://ok.example', origin],
        }),
    ).toThrow(
      expect.objectContaining({
        code: 'invalid_input',
        message: `ProgressServer: allowedOrigins[1] ${JSON.stringify(origin)} is not an origin as browsers send it (scheme://host[:port], lower case, without a path, a trailing slash or the default port)${fix}`,
      }),
    );
  });

  it("serves the HTTP API at the root with path '/' (httpHandler() and listen() took '/' for its basePath and threw)", async () => {
    const progress = await ProgressServer.listen(
      { store: new MemoryProgressStore(), authenticate: () => ({ id: 'alice' }), path: '/' },
      { port: 0, host: '127.0.0.1' },
    );
    try {
      const task = await progress.tasks.create({ owner: 'alice', kind: 'k' });
      const { port } = (progress.httpServer as Server).address() as AddressInfo;
      const response = await fetch(`http://127.0.0.1:${port}/tasks/${task.id}`);
      expect(response.status).toBe(200);
      expect(await response.json()).toMatchObject({ task: { id: task.id } });
      expect(() => progress.httpHandler()).not.toThrow();
    } finally {
      await progress.close();
    }
  });

  it('refuses a path or basePath that no request can carry as it is (a query, a fragment, a space, a non-ASCII character, a dot segment): it matched nothing', async () => {
    const unreachable = ['/api?v=1', '/progress#x', '/a b', '/progrès', '/a/../progress', '/100%'];
    for (const path of unreachable) {
      expect(
        () => new ProgressServer({ store: new MemoryProgressStore(), authenticate: noAuth, path } as never),
        path,
      ).toThrow(expect.objectContaining({ code: 'invalid_input' }));
    }
    const server = new ProgressServer({ store: new MemoryProgressStore(), authenticate: noAuth });
    try {
      for (const basePath of unreachable) {
        expect(() => server.httpHandler({ basePath }), basePath).toThrow(
          expect.objectContaining({ code: 'invalid_input', message: expect.stringContaining('basePath') }),
        );
      }
      // What clients send as they are, escapes included, is still accepted.
      for (const basePath of [
        '',
        '/api/progress',
        "/a-b_c.d~e!$&'()*+,;=:@",
        '/progr%C3%A8s',
        '/v1.2',
        '/a|b[0]^',
      ]) {
        expect(() => server.httpHandler({ basePath }), basePath).not.toThrow();
      }
    } finally {
      await server.close();
    }
    // The escaped form is what a client sends for /progrès, and is served there.
    const progress = await ProgressServer.listen(
      { store: new MemoryProgressStore(), authenticate: () => ({ id: 'alice' }), path: '/progr%C3%A8s' },
      { port: 0, host: '127.0.0.1' },
    );
    try {
      const { port } = (progress.httpServer as Server).address() as AddressInfo;
      const response = await fetch(`http://127.0.0.1:${port}/progrès/tasks`);
      expect(response.status).toBe(200);
    } finally {
      await progress.close();
    }
  });

  it('refuses "null" in allowedOrigins: every sandboxed frame and file: page sends it', () => {
    expect(
      () =>
        new ProgressServer({
          store: new MemoryProgressStore(),
          authenticate: noAuth,
          allowedOrigins: ['null'],
        }),
    ).toThrow(
      expect.objectContaining({
        code: 'invalid_input',
        message: expect.stringContaining('"null" would let any page in'),
      }),
    );
  });

  it('accepts listed origins as browsers send them', async () => {
    const origins = [
      'http://localhost:5173',
      'https://app.example.com',
      'https://xn--bcher-kva.example:8443',
      // Non-special schemes, sent as written: a browser extension's page, a Capacitor app's web view.
      'chrome-extension://abcdefghijklmnopabcdefghijklmnop',
      'capacitor://localhost',
    ];
    const server = new ProgressServer({
      store: new MemoryProgressStore(),
      authenticate: noAuth,
      allowedOrigins: origins,
    });
    expect(server).toBeInstanceOf(ProgressServer);
    await server.close();
  });

  it.each([
    ['no authentication hook', {}],
    ['an unknown option', { authenticate: noAuth, heartbeatMs: 5 }],
    [
      'a renew interval not below the lease',
      { authenticate: noAuth, leaseTtlMs: 1000, leaseRenewIntervalMs: 1000 },
    ],
    ['a fractional interval', { authenticate: noAuth, heartbeatIntervalMs: 10.5 }],
    ['a bad server id', { authenticate: noAuth, serverId: 'has space' }],
    ['a bad path', { authenticate: noAuth, path: 'progress' }],
    // It was accepted, then httpHandler() and listen() threw about a basePath the caller never passed.
    ['a path ending with /', { authenticate: noAuth, path: '/progress/' }],
    ['a query token without authenticateToken', { authenticate: noAuth, tokenQueryParam: 'token' }],
    ['a bad retry schedule', { authenticate: noAuth, terminalRetry: { initialDelayMs: 0 } }],
    ['bad allowed origins', { authenticate: noAuth, allowedOrigins: 'https://x' }],
  ])('throws invalid_input for %s', (_name, options) => {
    expect(
      () => new ProgressServer({ store: new MemoryProgressStore(), ...(options as object) } as never),
    ).toThrow(expect.objectContaining({ code: 'invalid_input' }));
  });

  // A Node timer fires after 1 ms when asked to wait longer than 2^31 - 1 ms: an authTimeoutMs of 2^31
  // closed every socket waiting for its auth frame with 4004 at once (heartbeatIntervalMs is bounded
  // lower, at 5 minutes: see below).
  it.each(['authTimeoutMs', 'upgradeTimeoutMs', 'reapIntervalMs', 'backpressurePollMs', 'storeRetryDelayMs'])(
    'refuses a %s longer than a timer can wait, and takes the longest it can',
    (name) => {
      const server = (value: number) =>
        new ProgressServer({ store: new MemoryProgressStore(), authenticate: noAuth, [name]: value });
      expect(() => server(2 ** 31)).toThrow(
        expect.objectContaining({ code: 'invalid_input', message: expect.stringContaining(name) }),
      );
      void server(2 ** 31 - 1).close({ timeoutMs: 0 });
    },
  );

  it('refuses a heartbeatIntervalMs above the 5 minutes clients honour, and takes 5 minutes', () => {
    // Clients derive their silence deadline from at most 300,000 ms of hello's interval: a server allowed
    // a longer one had its quiet sockets dropped (4010) by their clients between two heartbeats.
    const server = (heartbeatIntervalMs: number) =>
      new ProgressServer({ store: new MemoryProgressStore(), authenticate: noAuth, heartbeatIntervalMs });
    expect(() => server(300_001)).toThrow(
      expect.objectContaining({
        code: 'invalid_input',
        message: expect.stringContaining('heartbeatIntervalMs'),
      }),
    );
    void server(300_000).close({ timeoutMs: 0 });
  });

  it('refuses a terminalRetry delay longer than a timer can wait', () => {
    // Taken until 5 December 2026: the socket's retry timer then fired every millisecond, nothing due.
    const server = (maxDelayMs: number) =>
      new ProgressServer({
        store: new MemoryProgressStore(),
        authenticate: noAuth,
        terminalRetry: { maxDelayMs },
      });
    expect(() => server(2 ** 31)).toThrow(
      expect.objectContaining({
        code: 'invalid_input',
        message: expect.stringContaining('terminalRetry.maxDelayMs'),
      }),
    );
    void server(2 ** 31 - 1).close({ timeoutMs: 0 });
  });
});
