import pg from 'pg';
import { it, expect } from 'vitest';
import { PostgresProgressStore } from '../src/index.js';
import { freshSchema, pgUrl } from './support.js';

it('pool max 1', async () => {
  const pool = new pg.Pool({ connectionString: pgUrl(), max: 3, connectionTimeoutMillis: 5000, options: '-c idle_in_transaction_session_timeout=20 -c lock_timeout=1 -c statement_timeout=200 -c default_transaction_isolation=serializable -c idle_session_timeout=50' });
  pool.on('error', () => {});
  const schema = freshSchema('probe');
  const errs: string[] = []; const store = await PostgresProgressStore.open({ pool, schema, watermarkIntervalMs: 100, onError: (e) => errs.push(e.message) }); setTimeout(() => console.log('errs', errs), 1500);
  try {
    const ops: Promise<unknown>[] = [];
    for (let t = 0; t < 20; t++) {
      ops.push((async () => {
        await store.createTask({ id: `t${t}`, owner: 'o', kind: 'k' });
        await store.renewLease(`t${t}`, 'o', 60000).catch((e) => console.log('renew', e.message));
        await Promise.all([1,2,3].map((i) => store.append(`t${t}`, { type: 'progress', done: i })));
        await store.ack(`t${t}`, 2);
        await store.getTask(`t${t}`);
        await store.latestSeqs([`t${t}`]);
        await store.readEvents(`t${t}`, 0);
        await store.append(`t${t}`, { type: 'completed' });
        await store.releaseLease(`t${t}`, 'o').catch((e) => console.log('release', e.message));
      })());
    }
    ops.push(store.reapExpiredLeases());
    ops.push(store.listTasks({ owner: 'o' } as never).catch((e) => console.log('list', e.message)));
    ops.push(store.renewEpoch());
    ops.push(store.purgeFinished({ olderThanMs: 0 } as never).catch((e) => console.log('purge', e.message)));
    const r = await Promise.allSettled(ops); await new Promise((r) => setTimeout(r, 1600));
    console.log(r.filter((x) => x.status === 'rejected').map((x) => (x as PromiseRejectedResult).reason.message));
  } finally {
    await store.close();
    const admin = new pg.Client({ connectionString: pgUrl() }); await admin.connect();
    await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`); await admin.end();
    await pool.end();
  }
}, 60000);
