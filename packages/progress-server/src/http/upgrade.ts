/**
 * The raw-socket side of an upgrade: the subprotocols a client offered, and refusing it with an HTTP
 * status and a JSON error body.
 *
 * @module
 */
import { type IncomingMessage, STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import type { ErrorCode } from '@finishline/core';
import { ANSWER_HEADERS, authChallenge } from './http-request.js';

/**
 * The subprotocols a client offered in `Sec-WebSocket-Protocol` (empty when it offered none).
 */
export function offeredProtocols(request: IncomingMessage): string[] {
  const header = request.headers['sec-websocket-protocol'];
  if (header === undefined) return [];
  return header
    .split(',')
    .map((protocol) => protocol.trim())
    .filter((protocol) => protocol !== '');
}

/**
 * Refuses an upgrade with a plain HTTP response on the raw socket, then closes it. Browsers only see
 * that the connection failed; non-browser clients (and tests) see the status and the JSON error body.
 * Never throws: a socket that is already gone is simply destroyed.
 */
export function rejectUpgrade(
  socket: Duplex,
  refusal: { status: number; code: ErrorCode; message: string; headers?: Record<string, string> },
): void {
  const { status, code, message, headers = {} } = refusal;
  try {
    if (socket.destroyed || !socket.writable) {
      socket.destroy();
      return;
    }
    const body = JSON.stringify({ error: { code, message } });
    socket.once('finish', () => socket.destroy());
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\n` +
        'Connection: close\r\n' +
        (status === 401 ? `WWW-Authenticate: ${authChallenge(code)}\r\n` : '') +
        Object.entries(headers)
          .map(([name, value]) => `${name}: ${value}\r\n`)
          .join('') +
        // As every answer of the API (`ANSWER_HEADERS`), and not to be stored: it is a credential's refusal.
        Object.entries(ANSWER_HEADERS)
          .map(([name, value]) => `${name}: ${value}\r\n`)
          .join('') +
        'Cache-Control: no-store\r\n' +
        'Content-Type: application/json; charset=utf-8\r\n' +
        `Content-Length: ${Buffer.byteLength(body)}\r\n` +
        '\r\n' +
        body,
    );
  } catch {
    socket.destroy();
  }
}
