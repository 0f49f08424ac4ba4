import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A database path in a fresh directory under the OS temp dir; `remove()` deletes it with its WAL files. */
export function tempDatabase(name = 'progress.db'): { file: string; remove(): void } {
  const directory = mkdtempSync(join(tmpdir(), 'finishline-sqlite-'));
  return { file: join(directory, name), remove: () => rmSync(directory, { recursive: true, force: true }) };
}

/** Waits until `condition()` holds, checking every few ms, for at most `timeoutMs`. Never a timed assertion. */
export async function eventually(what: string, condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what}: still not true after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
