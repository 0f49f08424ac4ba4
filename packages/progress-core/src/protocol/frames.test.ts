import { describe, expect, it } from 'vitest';
import { PROTOCOL_NAME, PROTOCOL_NAME_V1, PROTOCOL_VERSION, protocolName } from './frames.js';

describe('protocol names', () => {
  it('writes out the subprotocol names protocolName gives (they are literals so bundles leave it out)', () => {
    expect(PROTOCOL_NAME).toBe(protocolName(PROTOCOL_VERSION));
    expect(PROTOCOL_NAME_V1).toBe(protocolName(1));
  });
});
