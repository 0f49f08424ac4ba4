import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { END_TIMEOUT_MS, endWithin } from '../src/bounded-end.js';

/**
 * `endWithin` on its own, with a client whose `end()` settles when the test says, as pg's does when its
 * socket closes (the real socket and a black-holed network: listen-close-blackholed.test.ts).
 */

/** A client shaped like pg's: `end()` resolves on the socket's close, which `destroy()` brings at once. */
function fakeClient(options: { withSocket?: boolean } = {}) {
  let closeSocket!: () => void;
  const ended = new Promise<void>((resolve) => {
    closeSocket = resolve;
  });
  const destroy = vi.fn(() => closeSocket());
  return {
    client: {
      end: () => ended,
      connection: options.withSocket === false ? undefined : { stream: { destroy } },
    },
    destroy,
    /** The server answered: the socket closes on its own. */
    answer: () => closeSocket(),
  };
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe('endWithin', () => {
  it('returns when end() does, leaving no timer and the socket alone', async () => {
    const { client, destroy, answer } = fakeClient();
    const ending = endWithin(client);
    answer();
    await ending;
    expect(vi.getTimerCount()).toBe(0);
    expect(destroy).not.toHaveBeenCalled();
  });

  it('destroys the socket once end() has not finished within the deadline, then returns', async () => {
    const { client, destroy } = fakeClient();
    let returned = false;
    const ending = endWithin(client).then(() => {
      returned = true;
    });
    await vi.advanceTimersByTimeAsync(END_TIMEOUT_MS - 1);
    expect(returned).toBe(false);
    expect(destroy).not.toHaveBeenCalled();
    await vi.advanceTimersByTimeAsync(1);
    await ending;
    expect(destroy).toHaveBeenCalledTimes(1);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('stops waiting after the deadline for a client without a reachable socket', async () => {
    const { client } = fakeClient({ withSocket: false });
    const ending = endWithin(client, 50);
    await vi.advanceTimersByTimeAsync(50);
    await ending;
    expect(vi.getTimerCount()).toBe(0);
  });

  it('gives up on an end() that the destroyed socket does not settle, one more deadline later', async () => {
    const destroy = vi.fn();
    const client = { end: () => new Promise<void>(() => {}), connection: { stream: { destroy } } };
    let returned = false;
    const ending = endWithin(client, 50).then(() => {
      returned = true;
    });
    await vi.advanceTimersByTimeAsync(50);
    expect(destroy).toHaveBeenCalledTimes(1);
    expect(returned).toBe(false);
    await vi.advanceTimersByTimeAsync(50);
    await ending;
    expect(vi.getTimerCount()).toBe(0);
  });

  it('never rejects when end() fails', async () => {
    await expect(endWithin({ end: () => Promise.reject(new Error('broken')) })).resolves.toBeUndefined();
    expect(vi.getTimerCount()).toBe(0);
  });
});
