import { describe, expect, it } from 'vitest';
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
});
