/**
 * Test-only: the `authenticate` hook of the client's real-server tests — the principal is the `x-user`
 * header, and a request without one is refused.
 *
 * @module
 */
import type { IncomingMessage } from 'node:http';

export const users = (request: IncomingMessage): { id: string } | null => {
  const user = request.headers['x-user'];
  return typeof user === 'string' ? { id: user } : null;
};
