import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { blockedFolder, startEmbeddedPostgres } from '../../../scripts/embedded-postgres.mjs';

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

function privateFolder(): string {
  const dir = mkdtempSync(join(tmpdir(), 'finishline-private-'));
  chmodSync(dir, 0o700);
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

describe('the embedded Postgres helper', () => {
  it('finds the folder the postgres user cannot enter', () => {
    const dir = privateFolder();
    mkdirSync(join(dir, 'a/b'), { recursive: true });
    expect(blockedFolder(join(dir, 'a/b'))).toBe(dir);
    chmodSync(dir, 0o755);
    expect(blockedFolder(join(dir, 'a/b'))).toBeUndefined();
  });

  it.skipIf(process.getuid?.() !== 0)(
    'starts as root with a private TMPDIR (a mktemp -d folder) and serves queries',
    async () => {
      const previous = process.env.TMPDIR;
      process.env.TMPDIR = privateFolder();
      cleanups.push(() => {
        if (previous === undefined) delete process.env.TMPDIR;
        else process.env.TMPDIR = previous;
      });
      const server = await startEmbeddedPostgres({ name: 'finishline-private-tmp' });
      try {
        const client = new pg.Client({ connectionString: server.url });
        await client.connect();
        const { rows } = await client.query('select 1 as one');
        await client.end();
        expect(rows).toEqual([{ one: 1 }]);
      } finally {
        await server.stop();
      }
    },
    60_000,
  );
});
