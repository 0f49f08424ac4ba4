/**
 * A raw HTTP request for the tests that talk to the server from docs/protocol.md alone: plain
 * `node:http`, nothing from the Finishline client, so those tests still check the document and not
 * our own client. Not part of the package's public entry.
 *
 * @module
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';

/** A whole answer, read to its end. */
export interface RawHttpAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  // biome-ignore lint/suspicious/noExplicitAny: bodies are read as the document describes them, with no decoder typing them.
  json(): Record<string, any>;
}

/** One request to `${baseUrl}${path}`, the whole answer read. */
export function rawHttp(
  baseUrl: string,
  method: string,
  path: string,
  opts: { headers?: Record<string, string>; body?: string } = {},
): Promise<RawHttpAnswer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${baseUrl}${path}`, { method, headers: opts.headers ?? {} }, (res) => {
      let body = '';
      res.on('data', (chunk: Buffer) => {
        body += chunk.toString();
      });
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, json: () => JSON.parse(body) }),
      );
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

/**
 * The token scheme of these tests: `<user>` or `<user>:<ms of validity>` (a negative validity is
 * already expired); an empty user or `bad` is refused.
 */
export const userTokens = (token: string) => {
  const [id, validMs] = token.split(':');
  if (id === undefined || id === '' || id === 'bad') return null;
  return validMs === undefined ? { id } : { id, expiresAt: Date.now() + Number(validMs) };
};

/**
 * The server options of the raw socket tests: a {@link userTokens} token, as a bearer `Authorization`
 * header at the upgrade or in the `auth` frame; one allowed origin; heartbeats out of the way.
 */
export const RAW_SOCKET_SERVER_OPTIONS = {
  authenticate: (req: IncomingMessage) => {
    const auth = req.headers.authorization;
    return auth?.startsWith('Bearer ') ? userTokens(auth.slice(7)) : null;
  },
  authenticateToken: userTokens,
  allowedOrigins: ['https://app.example.com'],
  heartbeatIntervalMs: 60_000,
};

/** The `Authorization` header of `user`'s token. */
export const bearer = (user = 'alice') => ({ authorization: `Bearer ${user}` });

/** {@link bearer}'s header and a JSON content type, for a request with a body. */
export const jsonHeaders = (user = 'alice') => ({ ...bearer(user), 'content-type': 'application/json' });
