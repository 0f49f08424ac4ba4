import type { ProtocolVersion } from '@finishline/core';
import { PROTOCOL_NAME, PROTOCOL_NAME_V1 } from '@finishline/core';

/**
 * Which protocol version a socket speaks. The server selects the newest subprotocol the client offered;
 * a client that offered none is spoken to in version 1 (what clients did before subprotocols were
 * required), so a raw `new WebSocket(url)` keeps working.
 *
 * @module
 */

/** Subprotocols this server speaks, newest first: the order in which it prefers them. */
export const SUPPORTED_SUBPROTOCOLS: readonly string[] = [PROTOCOL_NAME, PROTOCOL_NAME_V1];

/** The subprotocol to select among those offered, or `false` when none is spoken here. */
export function selectSubprotocol(offered: ReadonlySet<string> | readonly string[]): string | false {
  const has = (name: string) =>
    Array.isArray(offered) ? offered.includes(name) : (offered as ReadonlySet<string>).has(name);
  return SUPPORTED_SUBPROTOCOLS.find(has) ?? false;
}

/** The version of a socket from its selected subprotocol (`''` when the client offered none). */
export function versionOfSubprotocol(selected: string): ProtocolVersion {
  return selected === PROTOCOL_NAME ? 2 : 1;
}
