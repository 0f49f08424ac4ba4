import { describe, expect, it } from 'vitest';
import { type StreamingFetch, sseFallback } from './sse.js';
import { FakeTask } from './testing/fake-server.js';
import { record, setup } from './testing/harness.js';
import { flush } from './testing/manual-scheduler.js';

/**
 * A fallback attempt (an HTTP poll, an SSE stream) superseded (polling stopped: the socket is back; the
 * stream stopped) whose token function fails only later: its failure is no news for the watch, which the
 * socket follows fine.
 */
describe('a superseded fallback attempt', () => {
  it('reports on no watch an HTTP poll whose token function failed after polling stopped (the socket back)', async () => {
    const held: ((error: unknown) => void)[] = [];
    let hold = false;
    const { client, server, scheduler, http, errors } = setup({
      httpFallbackAfterAttempts: 1,
      httpPollIntervalMs: 1000,
      token: () => (hold ? new Promise<string>((_, reject) => held.push(reject)) : 'tok'),
    });
    http.tasks.set('t1', new FakeTask('t1', 2));
    const watch = client.watch('t1');
    const log = record(watch);
    hold = true;
    server.last.serverClose(1006); // HTTP polling takes over; its token function's call hangs
    await scheduler.advance(0);
    expect(held).toHaveLength(1);
    hold = false;
    while (server.sockets.length < 2) await scheduler.advance(10);
    server.accept(); // the socket is back: polling stops
    await flush();
    held[0]?.(new Error('refresh failed')); // and only now does the poll's token function fail
    await flush();
    expect(log.filter((entry) => entry.startsWith('error:'))).toEqual([]);
    expect(errors).toEqual([]);
    await client.close();
  });

  it('reports on no watch an SSE stream whose token function failed after the stream was stopped (the socket back)', async () => {
    const held: ((error: unknown) => void)[] = [];
    let hold = false;
    // (Never asked: the token function's call is still out when the stream stops.)
    const fetch: StreamingFetch = async () => ({ ok: false, status: 503, body: null });
    const { client, server, scheduler, errors } = setup({
      httpFallbackAfterAttempts: 1,
      fallbackTransport: sseFallback({ fetch }),
      token: () => (hold ? new Promise<string>((_, reject) => held.push(reject)) : 'tok'),
    });
    const log = record(client.watch('t1'));
    hold = true;
    server.last.serverClose(1006); // the stream takes over; its token function's call hangs
    await scheduler.advance(0);
    expect(held).toHaveLength(1);
    hold = false;
    while (server.sockets.length < 2) await scheduler.advance(10);
    server.accept(); // the socket is back: the stream stops
    await flush();
    held[0]?.(new Error('refresh failed'));
    await flush();
    expect(log.filter((entry) => entry.startsWith('error:'))).toEqual([]);
    expect(errors).toEqual([]);
    await client.close();
  });
});

describe('an SSE open answered with something else than an event stream', () => {
  it('cancels its body (a captive portal’s page) even when the app’s fetch ignores the abort signal', async () => {
    let cancelled = 0;
    // An application's `fetch` that ignores its signal: the page's body stays open until cancelled.
    const fetch: StreamingFetch = async () => ({
      ok: true,
      status: 200,
      headers: { get: (name) => (name === 'content-type' ? 'text/html' : null) },
      body: new ReadableStream<Uint8Array>({ cancel: () => void cancelled++ }),
    });
    const { client } = setup({ preferFallback: true, fallbackTransport: sseFallback({ fetch }) });
    const log = record(client.watch('t1'));
    await flush();
    expect(log).toEqual(['error:store_unavailable']);
    expect(cancelled).toBe(1);
    await client.close();
  });
});
