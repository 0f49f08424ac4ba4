import { describe, expect, it } from 'vitest';
import { eventually, storeFixtures } from './support.js';

/**
 * `NOTIFY` needs no privilege: any role that can connect to the database can send `{"epoch": "…"}` on a
 * store's channel. Until 7 December 2026 the store took such a notice at its word: it told its
 * `onEpochRenewed` listeners the epoch was renewed, and kept the payload's value as the epoch it knows, from
 * which a renewal after lost commits starts (then skipped as "renewed by another process first") and which
 * every reconnect compared the epoch it read with (another renewal reported, that never happened).
 */

const { admin, migrated, open } = storeFixtures('epochforged');

const fast = { watermarkIntervalMs: 20, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } };

describe('an epoch notice that no renewal sent', () => {
  it('is checked against the stored epoch: no renewal reported, none believed', async () => {
    const schema = await migrated();
    const renewer = await open({ schema });
    const store = await open({ schema, ...fast });
    const epoch = await store.getEpoch();
    let hints = 0;
    store.changes.onEpochRenewed(() => {
      hints += 1;
    });
    const heard = () => store.changes.stats().notifications;

    // Another role's pg_notify on the channel, naming an epoch the store never had.
    const before = heard();
    await admin.query('SELECT pg_notify($1, $2)', [`${schema}_changes`, JSON.stringify({ epoch: 'forged' })]);
    await eventually('the store heard the notice', () => heard() > before);

    // A reconnect reads the epoch and compares it with the one the store believes.
    const reconnects = store.changes.stats().reconnects;
    await admin.query('SELECT pg_terminate_backend($1)', [store.changes.health().listenerPid]);
    await eventually(
      'the listener reconnected',
      () => store.changes.stats().reconnects > reconnects && store.changes.health().connected,
    );

    // A real renewal is still reported, once.
    const renewed = await renewer.renewEpoch();
    expect(renewed).not.toBe(epoch);
    await eventually('the real renewal was reported', () => hints > 0, 5000);
    expect(hints).toBe(1);
    expect(await store.getEpoch()).toBe(renewed);
  });

  it("still reports this store's own renewal to its listeners, once", async () => {
    // Its own notice, read back, finds the epoch the store knows already: the renewal tells them itself.
    const schema = await migrated();
    const store = await open({ schema });
    const other = await open({ schema });
    let hints = 0;
    store.changes.onEpochRenewed(() => {
      hints += 1;
    });
    const heard = store.changes.stats().notifications;
    await store.renewEpoch();
    expect(hints).toBe(1);
    await eventually('the store heard its own notice', () => store.changes.stats().notifications > heard);
    // Read back after the first notice's, whose read is over once this one's renewal is reported.
    await other.renewEpoch();
    await eventually("the other store's renewal was reported", () => hints > 1, 5000);
    expect(hints).toBe(2);
  });
});
