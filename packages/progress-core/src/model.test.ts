import { describe, expect, it } from 'vitest';
import { EVENT_TYPES, TERMINAL_TYPES } from './model.js';

describe('EVENT_TYPES', () => {
  it('is progress and item, then every terminal type (written out, so the two lists must agree)', () => {
    expect(EVENT_TYPES).toEqual(['progress', 'item', ...TERMINAL_TYPES]);
  });
});
