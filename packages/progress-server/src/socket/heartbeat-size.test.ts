import { ErrorCode, isProgressError, LIMITS } from '@finishline/core';
import { decodeServerFrame } from '@finishline/core/internal';
import { describe, expect, it } from 'vitest';
import { MAX_SUBSCRIPTIONS_PER_SOCKET, resolveServerOptions } from '../options.js';
import { headerAuth } from '../testing/harness.js';

/**
 * A heartbeat names every task its socket follows (docs/protocol.md, `heartbeat`), so its size grows with
 * `maxSubscriptionsPerSocket`; a client refuses a frame above `LIMITS.maxFrameBytes` (`frame_too_large`).
 */

/** The largest heartbeat `subscriptions` can make: ids of the longest length, seqs and time at the top. */
function worstHeartbeat(subscriptions: number): string {
  const seqs: Record<string, number> = {};
  for (let i = 0; i < subscriptions; i++) {
    const id = `t${i}-`;
    seqs[id + 'x'.repeat(LIMITS.maxIdLength - id.length)] = LIMITS.maxCount;
  }
  return JSON.stringify({ type: 'heartbeat', time: LIMITS.maxCount, seqs });
}

const withSubscriptions = (maxSubscriptionsPerSocket: number) =>
  resolveServerOptions({
    store: { getTask: () => undefined } as never,
    authenticate: headerAuth,
    maxSubscriptionsPerSocket,
  });

describe('the heartbeat of a socket at its subscription cap', () => {
  it('fits in a frame at the largest cap the options accept, and the cap is the largest that does', () => {
    const fits = worstHeartbeat(MAX_SUBSCRIPTIONS_PER_SOCKET);
    expect(Buffer.byteLength(fits)).toBeLessThanOrEqual(LIMITS.maxFrameBytes);
    expect(decodeServerFrame(fits).ok).toBe(true);
    const over = decodeServerFrame(worstHeartbeat(MAX_SUBSCRIPTIONS_PER_SOCKET + 1));
    expect(over.ok ? undefined : over.error.code).toBe(ErrorCode.FrameTooLarge);
  });

  it('refuses a maxSubscriptionsPerSocket whose heartbeat a client could refuse', () => {
    // 1,000 subscriptions of 128-character ids made heartbeats of some 138 KB: every client refused them.
    expect(withSubscriptions(MAX_SUBSCRIPTIONS_PER_SOCKET).maxSubscriptionsPerSocket).toBe(
      MAX_SUBSCRIPTIONS_PER_SOCKET,
    );
    for (const value of [MAX_SUBSCRIPTIONS_PER_SOCKET + 1, 1000]) {
      let error: unknown;
      try {
        withSubscriptions(value);
      } catch (caught) {
        error = caught;
      }
      expect(isProgressError(error, ErrorCode.InvalidInput)).toBe(true);
      expect((error as Error).message).toContain('maxSubscriptionsPerSocket');
    }
  });
});
