import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteProgressStore } from '@finishline/sqlite';
import { afterEach, describe, expect, it } from 'vitest';
import { RawClient, serverFrameViolations } from '../../src/testing/harness.js';
import { listenOn } from './stores.js';

/**
 * Another process renews the epoch of the SQLite file a server runs on (a second server on the file, or an
 * operator's `renewEpoch` after a restore). The server's feed sees the commit at its next `data_version`
 * poll and tells the server (`ChangeFeed.onEpochRenewed`), which reads the epoch then: the sockets opened
 * after that announce the new epoch in `hello`, not the old one until the server's next heartbeat tick.
 */

const cleanups: Array<() => Promise<void> | void> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  expect(serverFrameViolations.splice(0)).toEqual([]);
});

describe('a SQLite epoch renewed by another process', () => {
  it("is in a new socket's hello long before the server's next heartbeat tick", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'finishline-epoch-other-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'progress.db');
    const store = new SqliteProgressStore({ database: file });
    cleanups.push(() => store.close());
    const other = new SqliteProgressStore({ database: file, dataVersionPollMs: 0 });
    cleanups.push(() => other.close());
    const { wsUrl, server } = await listenOn(store, { heartbeatIntervalMs: 60_000 });
    cleanups.push(() => server.close({ timeoutMs: 1000 }));
    const first = await RawClient.connect(wsUrl, { user: 'alice' });
    cleanups.push(async () => {
      await first.close();
    });
    const before = (first.frames.find((f) => f.type === 'hello') as { epoch?: string }).epoch;
    expect(before).toBe(await other.getEpoch());

    const renewed = await other.renewEpoch();
    const started = Date.now();
    let seen: string | undefined;
    // The feed polls every 50 ms (the default); the heartbeat tick is a minute away.
    while (Date.now() - started < 3000) {
      const client = await RawClient.connect(wsUrl, { user: 'alice' });
      seen = (client.frames.find((f) => f.type === 'hello') as { epoch?: string }).epoch;
      await client.close();
      if (seen === renewed) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(seen).toBe(renewed);
  });
});
