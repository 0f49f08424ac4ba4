import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { type AddressInfo, createConnection, createServer as createTcpServer, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { MemoryProgressStore } from '@finishline/core';
import { ProgressServer } from '@finishline/server';
import { build } from 'esbuild';
import { type Browser, chromium } from 'playwright-core';
import { browserVariants } from '../../scripts/browser-variants.mjs';

/**
 * What the Chromium tests run on: the real server (memory store) on port 0, serving the test page (bundled
 * from page.ts with esbuild) at `/`, behind a TCP proxy that can turn every current connection into a
 * black hole (bytes go nowhere, nothing is closed), as a laptop's sockets are after it sleeps.
 */

const here = (path: string) => fileURLToPath(new URL(path, import.meta.url));
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

export async function bundlePage(): Promise<string> {
  const result = await build({
    entryPoints: [here('./page.ts')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    write: false,
    plugins: [
      // The page gets what the package's `browser` export condition gives (socket-platform.browser.ts).
      browserVariants,
      {
        name: 'finishline-core-source',
        setup(b) {
          b.onResolve({ filter: /^@finishline\/core$/ }, () => ({
            path: here('../../../progress-core/src/index.ts'),
          }));
        },
      },
    ],
  });
  return result.outputFiles[0]?.text ?? '';
}

export interface Stack {
  server: ProgressServer;
  proxy: BlackholeProxy;
  /** The page's URL through the proxy, for a task. */
  pageUrl(taskId: string, flags?: string[]): string;
  close(): Promise<void>;
}

export async function startStack(options: {
  heartbeatIntervalMs: number;
  /** The server's `allowedOrigins`; same-origin by default. */
  allowedOrigins?: (origin: string) => boolean;
}): Promise<Stack> {
  const script = await bundlePage();
  const http = createServer();
  const store = new MemoryProgressStore();
  const server = new ProgressServer({
    store,
    server: http,
    authenticate: () => ({ id: 'alice' }),
    heartbeatIntervalMs: options.heartbeatIntervalMs,
    terminalRetry: { initialDelayMs: 50, maxDelayMs: 500 },
    ...(options.allowedOrigins === undefined ? {} : { allowedOrigins: options.allowedOrigins }),
  });
  const api = server.httpHandler({ basePath: '/progress' });
  http.on('request', (request, response) => {
    // No keep-alive: a connection Chromium keeps idle in its pool would be blackholed with the others,
    // and a stream reopened on it later would wait in the black hole for its silence timeout.
    response.shouldKeepAlive = false;
    const path = (request.url ?? '/').split('?')[0];
    if (path === '/') {
      response.writeHead(200, { 'content-type': 'text/html' });
      response.end('<!doctype html><title>finishline</title><script type="module" src="/page.js"></script>');
    } else if (path === '/page.js') {
      response.writeHead(200, { 'content-type': 'text/javascript' });
      response.end(script);
    } else api(request, response);
  });
  http.listen(0, '127.0.0.1');
  await once(http, 'listening');
  const proxy = await BlackholeProxy.start((http.address() as AddressInfo).port);
  return {
    server,
    proxy,
    pageUrl: (taskId, flags = []) =>
      `http://127.0.0.1:${proxy.port}/?task=${encodeURIComponent(taskId)}${flags.map((flag) => `&${flag}`).join('')}`,
    async close() {
      await proxy.close();
      await server.close({ timeoutMs: 0 });
      await new Promise((resolve) => (http as Server).close(resolve));
      await store.close();
    },
  };
}

/** A TCP proxy whose current connections can be made silent at once. */
export class BlackholeProxy {
  readonly #server: ReturnType<typeof createTcpServer>;
  readonly #pairs = new Set<{ dead: boolean; client: Socket; upstream: Socket }>();
  port = 0;

  private constructor(target: number) {
    this.#server = createTcpServer((client) => {
      const upstream = createConnection(target, '127.0.0.1');
      const pair = { dead: false, client, upstream };
      this.#pairs.add(pair);
      client.on('data', (chunk) => pair.dead || upstream.write(chunk));
      upstream.on('data', (chunk) => pair.dead || client.write(chunk));
      const end = () => {
        this.#pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on('close', () => pair.dead || end());
      upstream.on('close', () => pair.dead || end());
      client.on('error', () => undefined);
      upstream.on('error', () => undefined);
    });
  }

  static async start(target: number): Promise<BlackholeProxy> {
    const proxy = new BlackholeProxy(target);
    proxy.#server.listen(0, '127.0.0.1');
    await once(proxy.#server, 'listening');
    proxy.port = (proxy.#server.address() as AddressInfo).port;
    return proxy;
  }

  /** Every current connection goes silent both ways; new connections pass. */
  blackhole(): void {
    for (const pair of this.#pairs) pair.dead = true;
  }

  async close(): Promise<void> {
    for (const pair of this.#pairs) {
      pair.client.destroy();
      pair.upstream.destroy();
    }
    await new Promise((resolve) => this.#server.close(resolve));
  }
}

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
}
