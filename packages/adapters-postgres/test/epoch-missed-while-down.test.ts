import { describe, expect, it } from 'vitest';
import { eventually, gatedListenClients, storeFixtures } from './support.js';

/**
 * A store whose `LISTEN` connection was down while another store renewed the epoch missed the renewal's
 * notice. Until 6 December 2026 its reconnect read no epoch: it kept the old one as the epoch it knows (a
 * renewal after lost commits, which starts from it, was then skipped), and its server, told nothing, served
 * the old epoch with its feed's old seqs until its next heartbeat tick.
 */

const { admin, migrated, open } = storeFixtures('epochdown');

const fast = { watermarkIntervalMs: 20, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } };

describe('a store whose LISTEN connection was down during a renewal of the epoch', () => {
  it('reports the renewal once it reconnects, and only a real one', async () => {
    const schema = await migrated();
    const renewer = await open({ schema });
    const clients = gatedListenClients();
    const missed = await open({ schema, listenClient: clients.factory, ...fast });
    let hints = 0;
    missed.changes.onEpochRenewed(() => {
      hints += 1;
    });
    const reconnects = () => missed.changes.stats().reconnects;

    /** Takes the listener down, runs `meanwhile`, lets it reconnect, and waits until it listens again. */
    const downDuring = async (meanwhile: () => Promise<unknown>) => {
      const before = reconnects();
      clients.block();
      await admin.query('SELECT pg_terminate_backend($1)', [missed.changes.health().listenerPid]);
      await eventually('the listener is down', () => !missed.changes.health().connected);
      await meanwhile();
      clients.unblock();
      await eventually(
        'the listener reconnected',
        () => reconnects() > before && missed.changes.health().connected,
      );
    };

    // Down while nothing was renewed: no hint.
    await downDuring(async () => {});
    expect(hints).toBe(0);

    // Down while the other store renewed the epoch: its notice was lost, the reconnect reports it.
    await downDuring(() => renewer.renewEpoch());
    expect(hints).toBe(1);
  });
});
