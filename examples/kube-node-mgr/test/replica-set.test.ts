import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { type ReplicaSet, startReplicaSet } from '../src/server/replica-set.js';

const echoServer = fileURLToPath(new URL('./fixtures/echo-server.mjs', import.meta.url));
const PASSWORD = 'pw-4e1c9a7f';
const DATABASE_URL = `postgres://app:${PASSWORD}@127.0.0.1:1/app`;

interface Echo {
  argv: string[];
  pid: number;
  databaseUrl: string | null;
  hasSessionSecret: boolean;
}

let set: ReplicaSet | undefined;
afterEach(async () => {
  await set?.stop();
  set = undefined;
});

describe('startReplicaSet', () => {
  it('passes the database URL to the replicas in their environment, never on their command line', async () => {
    set = await startReplicaSet({
      serverScript: echoServer,
      replicas: 2,
      port: 0,
      demoPort: 0,
      databaseUrl: DATABASE_URL,
    });
    const seen = new Set<number>();
    // Round robin: two requests reach both replicas.
    for (let i = 0; i < 2; i++) {
      const echo = (await (await fetch(`${set.url}/`)).json()) as Echo;
      seen.add(echo.pid);
      expect(echo.databaseUrl).toBe(DATABASE_URL);
      expect(echo.hasSessionSecret).toBe(true);
      expect(echo.argv.join(' ')).not.toContain(PASSWORD);
      expect(echo.argv.join(' ')).not.toContain('postgres://');
      expect(echo.argv).not.toContain('--database-url');
    }
    expect(seen).toEqual(new Set(set.replicas.map((r) => r.child.pid)));
    // What `ps` shows: the kernel's copy of each replica's command line.
    for (const replica of set.replicas) {
      const cmdline = readFileSync(`/proc/${replica.child.pid}/cmdline`, 'utf8');
      expect(cmdline).toContain('echo-server.mjs');
      expect(cmdline).not.toContain(PASSWORD);
    }
  });
});
