import { ErrorCode } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { FakeTask } from './testing/fake-server.js';
import { FakeHttp, record, setup } from './testing/harness.js';
import { flush } from './testing/manual-scheduler.js';
import type { FetchLike } from './transport-types.js';

const MiB = 1024 * 1024;

describe('the HTTP fallback reads at most what the server sends', () => {
  it('refuses an answer larger than any page of the server (its cause frame_too_large), stops reading it and backs off', async () => {
    // A proxy answering 200 with a body far past the largest page (100 events and the task, each at most
    // 128 KiB): read whole, the page's memory grew with it. 40 MiB here, in 1 MiB chunks.
    let pulled = 0;
    let cancelled = 0;
    const fetch: FetchLike = async () =>
      new Response(
        new ReadableStream<Uint8Array>({
          pull(controller) {
            if (pulled >= 40 * MiB) return controller.close();
            pulled += MiB;
            controller.enqueue(new Uint8Array(MiB).fill(0x20));
          },
          cancel: () => void cancelled++,
        }),
        { status: 200, headers: { 'content-type': 'application/json' } },
      );
    const { client, server, scheduler } = setup({
      httpFallbackAfterAttempts: 1,
      fetch,
      httpPollIntervalMs: 1000,
    });
    const watch = client.watch('t1');
    const log = record(watch);
    const reported: unknown[] = [];
    watch.on('error', (error) => reported.push(error.cause));
    server.last.serverClose(1006); // HTTP polling takes over
    await scheduler.advance(0);
    for (let i = 0; i < 50 && log.length === 0; i++) await flush();
    // Reported as a captive portal's page is (a 200 that is not the server's answer), its cause saying why.
    expect(log).toEqual([`error:${ErrorCode.StoreUnavailable}`]);
    expect(reported).toEqual([ErrorCode.FrameTooLarge]);
    // (16 MiB read, and what the stream pulled ahead of the read.)
    expect(pulled).toBeLessThan(20 * MiB);
    expect(cancelled).toBe(1);
    // Backed off as for any failed poll: not asked again within the interval.
    pulled = 0;
    await scheduler.advance(999);
    expect(pulled).toBe(0);
    await client.close();
  });

  it('reads a streamed answer of the server whole, characters split across its chunks included', async () => {
    const http = new FakeHttp();
    const task = new FakeTask('t1', 2);
    http.tasks.set('t1', task);
    // As `fetch` answers: a body streamed one byte at a time.
    const fetch: FetchLike = async (url, init) => {
      const answer = await http.fetch(url, init);
      const bytes = new TextEncoder().encode(await answer.text());
      let at = 0;
      return new Response(
        new ReadableStream<Uint8Array>({
          pull: (controller) =>
            at < bytes.length ? controller.enqueue(bytes.subarray(at, ++at)) : controller.close(),
        }),
        { status: answer.status },
      );
    };
    const { client, server, scheduler } = setup({
      httpFallbackAfterAttempts: 1,
      fetch,
      httpPollIntervalMs: 1000,
    });
    const watch = client.watch('t1');
    const log = record(watch);
    server.last.serverClose(1006);
    await scheduler.advance(0);
    const keys: string[] = [];
    watch.on('item', (event) => keys.push(event.item.key));
    for (let i = 0; i < 200 && log.length < 1; i++) await flush();
    expect(log).toEqual(['snapshot@0']);
    task.item('é€😀');
    await scheduler.advance(1000);
    for (let i = 0; i < 200 && log.length < 2; i++) await flush();
    expect(log).toEqual(['snapshot@0', 'item@1']);
    expect(keys).toEqual(['é€😀']);
    await client.close();
  });
});
