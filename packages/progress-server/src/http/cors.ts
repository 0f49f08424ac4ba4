/**
 * CORS for the origins `allowedOrigins` lets in: what a browser needs to read the HTTP API's answers from
 * a page on another origin (`https://app.example.com` calling `https://progress.example.com`). Without
 * these headers the socket of such a page opened (the upgrade checks `Origin` itself) while its HTTP and
 * SSE fallbacks, and its acks over HTTP, failed in the browser as network errors: the very case the
 * fallbacks are for (a proxy without WebSocket) was the one where they could not work.
 *
 * Only a request whose `Origin` already passed `allowedOrigins` gets here (`checkOrigin` refused the rest
 * with 403), so the allow-list is the one trust decision, made in one place. The origin is echoed, never
 * `*`, with `Access-Control-Allow-Credentials: true`: the client sends its cookies by default
 * (`httpCredentials: 'include'`), and a browser refuses `*` with credentials.
 */

import type { IncomingMessage, ServerResponse } from 'node:http';

/** How long a browser may reuse a preflight's answer, in seconds (browsers cap it: Chromium at 2 h). */
const PREFLIGHT_MAX_AGE_S = 600;

/** A comma-separated list of header names (RFC 9110 tokens), as `Access-Control-Request-Headers` sends. */
const HEADER_LIST = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*,[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*$/;

/**
 * Lets the request's origin read this response (and any error answer that follows: the headers are set
 * on the response, which `writeHead` merges). A request without `Origin` (same-origin `GET`, curl) needs
 * nothing.
 */
export function allowOrigin(request: IncomingMessage, response: ServerResponse): void {
  const origin = request.headers.origin;
  if (origin === undefined) return;
  response.setHeader('access-control-allow-origin', origin);
  response.setHeader('access-control-allow-credentials', 'true');
  // A page reads only the CORS-safelisted headers of a cross-origin answer unless told more: the challenge
  // of a 401 (`invalid_token`: fetch a fresh credential) and the wait of a 429 are for it to read.
  response.setHeader('access-control-expose-headers', 'WWW-Authenticate, Retry-After');
  // The answer depends on the Origin: a shared cache must not hand one origin's answer to another.
  response.setHeader('vary', 'Origin');
}

/** A CORS preflight: `OPTIONS` with an `Origin` and the method the browser is about to send. */
export function isPreflight(request: IncomingMessage): boolean {
  return (
    request.method === 'OPTIONS' &&
    request.headers.origin !== undefined &&
    request.headers['access-control-request-method'] !== undefined
  );
}

/**
 * Answers a preflight for a route that takes `methods` (204, no body). The headers the browser asks for
 * are allowed as asked: the client's own `headers` option may add any, and the origin is one the
 * application trusts already; a value that is not a list of header names is left out, so the browser
 * refuses the request.
 */
export function answerPreflight(request: IncomingMessage, response: ServerResponse, methods: string): void {
  allowOrigin(request, response);
  const asked = request.headers['access-control-request-headers'];
  const headers: Record<string, string> = {
    'access-control-allow-methods': methods,
    'access-control-max-age': String(PREFLIGHT_MAX_AGE_S),
    vary: 'Origin, Access-Control-Request-Headers',
    'content-length': '0',
  };
  if (typeof asked === 'string' && HEADER_LIST.test(asked.trim())) {
    headers['access-control-allow-headers'] = asked.trim();
  }
  response.writeHead(204, headers);
  response.end();
}
