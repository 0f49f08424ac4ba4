import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ErrorCode, MemoryProgressStore } from '@finishline/core';
import { ProgressServer } from '@finishline/server';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { ProgressClient } from '../src/progress-client.js';

// A server refuses a credential with an `error` frame `unauthenticated` and then the close 4001 (see
// docs/protocol.md, Authentication). Until 7 December 2026 the client reported both to the application's
// `error` listener: the frame, then the fatal close that ends it, one refusal heard twice.

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function start(): Promise<{ server: ProgressServer; url: string }> {
  const server = await ProgressServer.listen(
    {
      store: new MemoryProgressStore(),
      authenticateToken: (token) => (token.startsWith('good') ? { id: 'alice' } : null),
    },
    { port: 0, host: '127.0.0.1' },
  );
  cleanups.push(() => server.close({ timeoutMs: 1000 }));
  const { port } = (server.httpServer as Server).address() as AddressInfo;
  return { server, url: `ws://127.0.0.1:${port}/progress` };
}

/** What the client's `error` listener heard, once the client ended. */
async function heard(client: ProgressClient, run: () => Promise<void>): Promise<string[]> {
  const errors: string[] = [];
  client.on('error', (error) => errors.push(error.code));
  const closed = new Promise<void>((resolve) =>
    client.on('state', (change) => change.state === 'closed' && resolve()),
  );
  await run();
  await closed;
  // Anything the server sent after the close would have arrived by now.
  await new Promise((resolve) => setTimeout(resolve, 100));
  return errors;
}

describe('a credential the server refuses reaches the error listener once', () => {
  it('in the first auth frame', async () => {
    const { url } = await start();
    const client = new ProgressClient({ url, WebSocket, token: 'bad' });
    cleanups.push(() => client.close());
    const watch = client.watch('t1');
    const errors = await heard(client, () =>
      expect(watch.done).rejects.toMatchObject({ code: ErrorCode.Unauthenticated }),
    );
    expect(errors).toEqual([ErrorCode.Unauthenticated]);
  });

  it('in a renewal (renewToken)', async () => {
    const { server, url } = await start();
    let issued = 0;
    const client = new ProgressClient({ url, WebSocket, token: () => (++issued === 1 ? 'good' : 'bad') });
    cleanups.push(() => client.close());
    const task = await server.tasks.create({ owner: 'alice', kind: 'k', total: 2 });
    const watch = client.watch(task.id);
    const errors = await heard(client, async () => {
      await expect.poll(() => watch.getSnapshot().progress?.total).toBe(2);
      expect(await client.renewToken()).toBe(true);
      await expect(watch.done).rejects.toMatchObject({ code: ErrorCode.Unauthenticated });
    });
    expect(errors).toEqual([ErrorCode.Unauthenticated]);
  });
});
