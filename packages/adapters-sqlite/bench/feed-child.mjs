// Child process of store.bench.mjs: appends to one task of a shared database file, one append at a time
// with a short pause between them, and reports each event's commit time (high-resolution wall clock, so
// the parent can subtract it from the time its listener ran). `raw` mode does the same with plain
// better-sqlite3 INSERTs: the baseline.
import { createRequire } from 'node:module';
import { SqliteProgressStore } from '../dist/index.js';

const require = createRequire(import.meta.url);
const Database = require('better-sqlite3');

const [mode, file, taskId, countText] = process.argv.slice(2);
const count = Number(countText);
const wallNow = () => performance.timeOrigin + performance.now();
const pause = () => new Promise((resolve) => setTimeout(resolve, 2));
const commits = [];

if (mode === 'store') {
  const raw = new Database(file);
  // Time the end of each COMMIT through the store's structural driver interface.
  const database = {
    memory: false,
    close: () => raw.close(),
    prepare(sql) {
      const statement = raw.prepare(sql);
      if (sql !== 'COMMIT') return statement;
      return {
        run: (...parameters) => {
          const result = statement.run(...parameters);
          commits.push(wallNow());
          return result;
        },
        get: (...parameters) => statement.get(...parameters),
        all: (...parameters) => statement.all(...parameters),
      };
    },
  };
  const store = new SqliteProgressStore({ database, dataVersionPollMs: 0 });
  process.send({ type: 'ready' });
  await new Promise((resolve) => process.once('message', resolve));
  const first = commits.length;
  for (let i = 0; i < count; i++) {
    await store.append(taskId, { type: 'item', key: `n-${i}`, ok: true });
    await pause();
  }
  await store.close();
  raw.close();
  process.send({ type: 'commits', commits: commits.slice(first) });
} else {
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  const insert = db.prepare('INSERT INTO events (task_id, seq, payload) VALUES (?, ?, ?)');
  process.send({ type: 'ready' });
  await new Promise((resolve) => process.once('message', resolve));
  for (let i = 0; i < count; i++) {
    insert.run(taskId, i + 1, JSON.stringify({ key: `n-${i}`, ok: true }));
    commits.push(wallNow());
    await pause();
  }
  db.close();
  process.send({ type: 'commits', commits });
}
