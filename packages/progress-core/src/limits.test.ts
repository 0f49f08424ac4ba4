import { describe, expect, it } from 'vitest';
import { LIMITS, MAX_FRAME_BYTES, MAX_ID_LENGTH, MAX_MESSAGE_LENGTH } from './limits.js';

describe('LIMITS', () => {
  it('states maxCount and the frame limit as they were written before (the literals keep bundles small)', () => {
    expect(LIMITS.maxCount).toBe(Number.MAX_SAFE_INTEGER);
    expect(LIMITS.maxFrameBytes).toBe(128 * 1024);
  });

  it('has the inlinable constants equal to its fields', () => {
    expect(MAX_ID_LENGTH).toBe(LIMITS.maxIdLength);
    expect(MAX_MESSAGE_LENGTH).toBe(LIMITS.maxMessageLength);
    expect(MAX_FRAME_BYTES).toBe(LIMITS.maxFrameBytes);
    expect(Object.isFrozen(LIMITS)).toBe(true);
  });
});
