import { describe, expect, it, vi } from 'vitest';
import { DataVersionWatcher } from './data-version-watcher.js';

function watcher(versions: () => number) {
  const changes: number[] = [];
  const errors: unknown[] = [];
  let calls = 0;
  const instance = new DataVersionWatcher({
    intervalMs: 60_000,
    readVersion: versions,
    onChange: () => changes.push(++calls),
    onError: (error) => errors.push(error),
  });
  return { instance, changes, errors };
}

describe('DataVersionWatcher', () => {
  it('calls onChange once per poll that sees a new version, never for an unchanged one', () => {
    let version = 1;
    const { instance, changes } = watcher(() => version);
    instance.start();
    expect(instance.check()).toBe(false);
    version = 2;
    expect(instance.check()).toBe(true);
    expect(instance.check()).toBe(false);
    version = 5;
    expect(instance.check()).toBe(true);
    expect(changes).toEqual([1, 2]);
    instance.stop();
  });

  it('reports errors and keeps polling', () => {
    let fail = true;
    let version = 1;
    const { instance, changes, errors } = watcher(() => {
      if (fail) throw new Error('SQLITE_BUSY');
      return version;
    });
    expect(instance.check()).toBe(false);
    fail = false;
    version = 3;
    expect(instance.check()).toBe(true);
    expect(errors).toHaveLength(1);
    expect(changes).toEqual([1]);
  });

  it('reports a streak of failed polls once, counts every one, and reports again after a success', () => {
    let fail = false;
    let version = 1;
    const { instance, changes, errors } = watcher(() => {
      if (fail) throw new Error('SQLITE_IOERR');
      return version;
    });
    instance.start();
    fail = true;
    for (let poll = 0; poll < 20; poll++) expect(instance.check()).toBe(false);
    expect(errors).toHaveLength(1);
    expect(instance.failures).toBe(20);
    fail = false;
    expect(instance.check()).toBe(true);
    expect(instance.check()).toBe(false);
    fail = true;
    instance.check();
    instance.check();
    expect(errors).toHaveLength(2);
    expect(instance.failures).toBe(22);
    fail = false;
    version = 2;
    expect(instance.check()).toBe(true);
    expect(changes).toEqual([1, 2]);
    instance.stop();
  });

  it('a streak of onChange failures is reported once too, and again after a poll that succeeded', () => {
    let failing = true;
    let version = 1;
    const errors: unknown[] = [];
    const instance = new DataVersionWatcher({
      intervalMs: 60_000,
      readVersion: () => version,
      onChange: () => {
        if (failing) throw new Error('SQLITE_IOERR');
      },
      onError: (error) => errors.push(error),
    });
    instance.start();
    version = 2;
    for (let poll = 0; poll < 5; poll++) instance.check();
    expect(errors).toHaveLength(1);
    failing = false;
    expect(instance.check()).toBe(true);
    failing = true;
    version = 3;
    instance.check();
    expect(errors).toHaveLength(2);
    instance.stop();
  });

  it('calls onChange again at the next poll when it threw, though the version did not move again', () => {
    let version = 1;
    let failing = true;
    const errors: unknown[] = [];
    let changes = 0;
    const instance = new DataVersionWatcher({
      intervalMs: 60_000,
      readVersion: () => version,
      onChange: () => {
        changes += 1;
        if (failing) throw new Error('SQLITE_IOERR');
      },
      onError: (error) => errors.push(error),
    });
    instance.start();
    version = 2;
    expect(instance.check()).toBe(false);
    failing = false;
    expect(instance.check()).toBe(true);
    expect(instance.check()).toBe(false);
    expect([changes, errors.length]).toEqual([2, 1]);
  });

  it('polls on one interval timer that stop() clears', () => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
    try {
      let version = 1;
      const { instance, changes } = watcher(() => version);
      instance.start();
      instance.start();
      expect(vi.getTimerCount()).toBe(1);
      version = 2;
      vi.advanceTimersByTime(60_000);
      expect(changes).toEqual([1]);
      instance.stop();
      instance.stop();
      expect(instance.running).toBe(false);
      expect(vi.getTimerCount()).toBe(0);
    } finally {
      vi.useRealTimers();
    }
  });

  it('never keeps the process alive: its timer is unref’d', () => {
    // getActiveResourcesInfo lists only what keeps the event loop alive.
    const refTimers = () => process.getActiveResourcesInfo().filter((name) => name === 'Timeout').length;
    const before = refTimers();
    const { instance } = watcher(() => 1);
    instance.start();
    expect(instance.running).toBe(true);
    expect(refTimers()).toBe(before);
    instance.stop();
  });
});
