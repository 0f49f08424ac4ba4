import { describe, expect, it } from 'vitest';
import {
  PROTOCOL_NAME,
  PROTOCOL_NAME_V1,
  PROTOCOL_NAME_V2,
  PROTOCOL_NAMES,
  PROTOCOL_VERSION,
  PROTOCOL_VERSIONS,
  protocolName,
} from './frames.js';

describe('protocol names', () => {
  it('writes out the subprotocol names protocolName gives (they are literals so bundles leave it out)', () => {
    expect(PROTOCOL_NAME).toBe(protocolName(PROTOCOL_VERSION));
    expect(PROTOCOL_NAME_V2).toBe(protocolName(2));
    expect(PROTOCOL_NAME_V1).toBe(protocolName(1));
    expect(PROTOCOL_NAMES).toEqual([...PROTOCOL_VERSIONS].reverse().map(protocolName));
  });
});
