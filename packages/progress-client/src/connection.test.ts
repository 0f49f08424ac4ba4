import { FATAL_CLOSE_CODES } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { FATAL_ERRORS } from './connection.js';

describe('fatal close codes', () => {
  it('ends the client on exactly the close codes core calls fatal (an entry in FATAL_ERRORS is the test)', () => {
    expect(new Set(Object.keys(FATAL_ERRORS).map(Number))).toEqual(new Set(FATAL_CLOSE_CODES));
  });
});
