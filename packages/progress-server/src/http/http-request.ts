/**
 * The HTTP plumbing of the API: error codes to statuses, the refusal type, the Origin check of every
 * route and the CSRF check of mutating requests, query and body parsing, and JSON replies.
 *
 * @module
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TaskStatus } from '@finishline/core';
import { ErrorCode, TASK_STATUSES } from '@finishline/core';
import type { AllowedOrigins } from '../auth.js';
import { isOriginAllowed } from '../auth.js';
import { clip } from '../tasks/clip.js';

/** HTTP status of each error code (docs/errors.md). */
export const HTTP_STATUS: Readonly<Record<ErrorCode, number>> = Object.freeze({
  invalid_frame: 400,
  frame_too_large: 413,
  unknown_frame: 400,
  unsupported_protocol: 400,
  unauthenticated: 401,
  token_expired: 401,
  forbidden: 403,
  rate_limited: 429,
  too_many_subscriptions: 429,
  too_many_sockets: 429,
  invalid_input: 400,
  task_not_found: 404,
  task_finished: 409,
  lease_held: 409,
  store_unavailable: 503,
  closed: 503,
  unreachable: 502,
  timeout: 504,
  internal: 500,
});

/**
 * Headers of every answer the server writes, whatever its status or body (JSON, the event stream, a 204,
 * a refused upgrade's). `nosniff`: task data is text others wrote (task messages, items' errors), and a
 * browser sniffing a JSON or error answer as HTML (an old one, or one opened as a page) would run it in
 * the API's origin. Until 7 December 2026 no answer carried it.
 */
export const ANSWER_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'x-content-type-options': 'nosniff',
});

/** Largest request body read (the cancel route's `{ reason }`). */
const MAX_BODY_BYTES = 16 * 1024;

/** A refusal with its HTTP status (and extra headers, e.g. `Allow`). */
export class HttpError extends Error {
  readonly status: number;
  readonly code: ErrorCode;
  readonly headers: Record<string, string>;

  constructor(
    code: ErrorCode,
    message: string,
    http: { status?: number; headers?: Record<string, string>; cause?: unknown } = {},
  ) {
    super(message, http.cause === undefined ? undefined : { cause: http.cause });
    this.code = code;
    this.status = http.status ?? HTTP_STATUS[code];
    this.headers = {
      ...(this.status === 401 ? { 'www-authenticate': authChallenge(code) } : {}),
      ...http.headers,
    };
  }
}

/**
 * The `WWW-Authenticate` challenge of a 401, which RFC 9110 §15.5.2 requires on every one: `Bearer`
 * (RFC 6750), the scheme the server reads besides the application's own `authenticate` hook. An expired
 * credential says `invalid_token`, so a client knows to fetch a fresh one; a request without valid
 * credentials gets the bare challenge.
 */
export function authChallenge(code: ErrorCode): string {
  return code === ErrorCode.TokenExpired
    ? 'Bearer realm="finishline", error="invalid_token", error_description="The credential expired"'
    : 'Bearer realm="finishline"';
}

export function fromCode(code: ErrorCode, message: string): HttpError {
  return new HttpError(code, message);
}

/** The JSON error body every refusal carries. */
export function errorBody(code: ErrorCode, message: string): { error: { code: ErrorCode; message: string } } {
  return { error: { code, message } };
}

/**
 * Refuses a state-changing request a web page on another site could have made with the user's cookies
 * (cross-site request forgery), once {@link checkOrigin} let it through (an `Origin` allowed by
 * `allowedOrigins`, or none):
 * - no `Origin` at all on a request carrying a `Cookie` header (browsers send one on every `POST`; its
 *   absence with a cookie means an old or unusual browser we cannot vouch for), whatever
 *   `allowedOrigins` is, `'*'` included: the server does not know whether the application's
 *   `authenticate` reads the cookie, so the header's presence is what it checks. (Under `'*'` this was
 *   skipped, though the docs said every such request is refused, and a predicate answering `true`
 *   refused it.)
 * - a body that is not `application/json`: only `text/plain`, form and multipart bodies can be sent
 *   cross-site without a CORS preflight, so requiring JSON puts every such request behind one.
 *
 * And a body whose `Content-Length` is above what the server reads (413), as the read would refuse it:
 * refused only once 16 KiB of it had arrived, a request announcing a large body and sending a few bytes
 * held its connection (and ran the `authenticate` hook) until `requestTimeout`, for an answer known from
 * its headers.
 */
export function checkMutation(request: IncomingMessage): void {
  if (request.headers.origin === undefined && request.headers.cookie !== undefined) {
    throw new HttpError(ErrorCode.Forbidden, 'A request with cookies must carry an Origin header');
  }
  const type = (request.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (type !== 'application/json') {
    throw new HttpError(ErrorCode.InvalidInput, 'The body must be sent as Content-Type: application/json', {
      status: 415,
    });
  }
  if (Number(request.headers['content-length'] ?? 0) > MAX_BODY_BYTES) throw bodyTooLarge();
}

/** The 413 of a body above {@link MAX_BODY_BYTES}, announced or read. */
function bodyTooLarge(): HttpError {
  return new HttpError(ErrorCode.InvalidInput, `The body must be at most ${MAX_BODY_BYTES} bytes`, {
    status: 413,
  });
}

/**
 * Refuses a request whose `Origin` is not allowed by `allowedOrigins` (`Origin: null` included), as the
 * upgrade does; one without `Origin` passes. The read routes need this too: a page on another origin of
 * the same site sends the user's cookies with its `EventSource`, and its streams would use up the
 * principal's stream slots (a denial of service against the user's own page) while each held a hub
 * follow and store reads. Unlike {@link checkMutation} it does not require an `Origin` with a cookie:
 * browsers send none on a same-origin `GET`.
 */
export function checkOrigin(request: IncomingMessage, allowedOrigins: AllowedOrigins): void {
  if (!isOriginAllowed(request, allowedOrigins)) {
    throw new HttpError(ErrorCode.Forbidden, originRefusal(request, allowedOrigins));
  }
  if (embeddedFromAnotherSite(request)) {
    throw new HttpError(
      ErrorCode.Forbidden,
      'A request from another site must be a CORS request (fetch, EventSource) carrying its Origin',
    );
  }
}

/**
 * A request a page of another site (or another origin of this site) made without CORS: an `<iframe>`,
 * `<img>`, `<script>` or `<object>` pointing at a route, which browsers send with the user's cookies
 * (`SameSite=Lax` ones too, from a sibling subdomain) and without `Origin`, so the Origin check let it
 * through: a page of 100 iframes of `GET …/stream` held every one of the principal's stream slots
 * (`maxSocketsPerPrincipal`), and the user's own page was refused hers. Browsers name such a request in
 * `Sec-Fetch-Site` / `Sec-Fetch-Dest`; the client's `fetch` and `EventSource` to another origin carry
 * `Origin` and are judged by `allowedOrigins` instead. A top-level navigation (a link followed) is let
 * through, as a request without these headers (an older browser, curl) is.
 */
function embeddedFromAnotherSite(request: IncomingMessage): boolean {
  if (request.headers.origin !== undefined) return false;
  const site = request.headers['sec-fetch-site'];
  if (site !== 'cross-site' && site !== 'same-site') return false;
  return !(
    request.headers['sec-fetch-mode'] === 'navigate' && request.headers['sec-fetch-dest'] === 'document'
  );
}

/** Longest Origin or Host echoed in a refusal: enough for any real one, and no header-sized answer. */
const ECHOED_HEADER_MAX = 200;

/**
 * Names what was compared: a page on `http://localhost:3000` calling `http://127.0.0.1:3000` could not tell
 * from "Origin not allowed" which of the two the server took for its own. The echoed headers are the
 * caller's own, in a JSON body a foreign page cannot read (no CORS headers for it).
 */
function originRefusal(request: IncomingMessage, allowedOrigins: AllowedOrigins): string {
  const echo = (value: string | undefined) => clip(value ?? '', ECHOED_HEADER_MAX);
  const refused = `Origin ${echo(request.headers.origin)} not allowed`;
  if (allowedOrigins !== 'same-origin') return refused;
  return `${refused}: allowedOrigins is 'same-origin' and this request's Host is ${echo(request.headers.host)}`;
}

/**
 * The query parameter `name` of `url` (`null` when absent), refused 400 `invalid_input` when given more
 * than once: the first was taken and the others ignored, while a proxy, cache or firewall in front may
 * read the last (or all of them), so the two could judge one request by different values (HTTP parameter
 * pollution: `?limit=1&limit=1000` checked as 1 and served as 1,000, or the reverse).
 */
export function queryParam(url: URL, name: string): string | null {
  const values = url.searchParams.getAll(name);
  if (values.length > 1) {
    throw fromCode(ErrorCode.InvalidInput, `${name} must be given at most once, got ${values.length} times`);
  }
  return values[0] ?? null;
}

export function parseInteger(
  raw: string | null,
  rule: { name: string; fallback: number; min: number; max: number },
): number {
  const { name, fallback, min, max } = rule;
  if (raw === null || raw === '') return fallback;
  // At most 16 significant digits (a longer run is above maxCount, and Number() of it would round), after
  // any leading zeros: `0000000000000001` was read as 1 and `00000000000000001`, the same integer, refused.
  const value = /^0*\d{1,16}$/.test(raw) ? Number(raw) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw fromCode(ErrorCode.InvalidInput, `${name} must be an integer from ${min} to ${max}`);
  }
  return value;
}

export function parseStatuses(raw: string | null): TaskStatus[] | undefined {
  if (raw === null || raw === '') return undefined;
  const statuses = raw.split(',');
  for (const status of statuses) {
    if (!(TASK_STATUSES as readonly string[]).includes(status)) {
      throw fromCode(
        ErrorCode.InvalidInput,
        `status must be a comma-separated list of ${TASK_STATUSES.join(', ')}`,
      );
    }
  }
  return statuses as TaskStatus[];
}

/**
 * The request's JSON object body: one a framework already parsed (`request.body`), or read from the
 * stream (at most 16 KiB). An empty body is `{}`.
 */
export async function readJsonBody(request: IncomingMessage): Promise<Record<string, unknown>> {
  const parsed = (request as { body?: unknown }).body;
  let value: unknown;
  if (parsed !== undefined && !(typeof parsed === 'string' || parsed instanceof Uint8Array)) {
    value = parsed;
  } else {
    const text =
      typeof parsed === 'string'
        ? parsed
        : parsed instanceof Uint8Array
          ? Buffer.from(parsed).toString('utf8')
          : await readStream(request);
    if (text.trim() === '') return {};
    try {
      // Without a leading byte order mark, as RFC 8259 (§8.1) lets a parser do: JSON.parse refuses it,
      // and some Windows tools write one in front of a JSON file a script then sends (`curl --data @file`).
      value = JSON.parse(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text);
    } catch {
      throw fromCode(ErrorCode.InvalidInput, 'The body must be JSON');
    }
  }
  if (value === null || value === undefined) return {};
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw fromCode(ErrorCode.InvalidInput, 'The body must be a JSON object');
  }
  return value as Record<string, unknown>;
}

/**
 * A client that left before sending its whole body sent a bad request, not one the handler failed: it is
 * refused as `invalid_input` (which no one receives), not logged or counted as an internal error.
 */
function clientLeft(cause?: unknown): HttpError {
  return new HttpError(ErrorCode.InvalidInput, 'The client left before sending the whole body', { cause });
}

function readStream(request: IncomingMessage): Promise<string> {
  if (request.readableEnded) return Promise.resolve('');
  // It left while the request was authenticated: its 'error' and 'close' were emitted already (the
  // 'error' only to listeners, and there were none), so nothing would ever settle the read.
  if (request.destroyed) return Promise.reject(clientLeft());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        cleanup();
        // What arrives until the answer is written is read and dropped; then the connection closes (see
        // `sendEncoded`).
        request.resume();
        reject(bodyTooLarge());
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      cleanup();
      resolve(Buffer.concat(chunks).toString('utf8'));
    };
    // Node emits 'error' (ECONNRESET "aborted") then 'close' when the client leaves mid-body; 'close'
    // alone ends the read should an 'error' not come.
    const onError = (error: Error) => {
      cleanup();
      reject(clientLeft(error));
    };
    const onClose = () => {
      cleanup();
      reject(clientLeft());
    };
    const cleanup = () => {
      request.off('data', onData);
      request.off('end', onEnd);
      request.off('error', onError);
      request.off('close', onClose);
    };
    request.on('data', onData);
    request.on('end', onEnd);
    request.on('error', onError);
    request.on('close', onClose);
  });
}

/** Size of the slices a large answer is written in when its progress is followed (see {@link send}). */
export const ANSWER_SLICE_BYTES = 64 * 1024;

/**
 * Sends `reply` as JSON. With `progress`, an answer above {@link ANSWER_SLICE_BYTES} is written a slice of
 * that size at a time, and `progress` is called as each one leaves for the network: a client that reads
 * slowly is told from one that stopped reading (an answer written whole reports nothing until all of it
 * left).
 */
export function send(
  response: ServerResponse,
  reply: { status: number; body: unknown; headers?: Record<string, string> },
  progress?: () => void,
): void {
  if (response.headersSent || response.writableEnded || response.destroyed) return;
  sendEncoded(response, { ...reply, data: encodeBody(reply.body) }, progress);
}

/** The JSON text of an answer's body, as {@link send} writes it. */
export function encodeBody(body: unknown): Buffer {
  return Buffer.from(JSON.stringify(body), 'utf8');
}

/**
 * Whether the request's body, larger than the server ever reads (or chunked, of no stated length), has not
 * all arrived yet: answered before it (a refusal, 401, 403, 413, …), its connection is closed once the
 * answer is written (`Connection: close`). Kept open, Node read the rest
 * of the body, however long its `Content-Length` or chunked stream, to reuse the connection: a client,
 * authenticated or not, could make the server take every byte it sent.
 */
function bodyStillComing(request: IncomingMessage | undefined): boolean {
  if (request === undefined || request.complete) return false;
  if (request.headers['transfer-encoding'] !== undefined) return true;
  // A body the server would have read anyway (at most MAX_BODY_BYTES) is cheap to read to its end: the
  // connection stays open for the client's next request (a 401 or 404 before a small body was read
  // closed a browser's kept-alive connection).
  const length = Number(request.headers['content-length'] ?? 0);
  return !(length <= MAX_BODY_BYTES);
}

/**
 * The `Connection: close` of an answer written while the request's body is still coming (see
 * {@link bodyStillComing}), or nothing: for every answer, the JSON ones and the event stream's (its 200,
 * its `HEAD`, its 204), which Node otherwise kept open to read the rest of the body.
 */
export function closeIfBodyComing(request: IncomingMessage | undefined): { connection?: 'close' } {
  return bodyStillComing(request) ? { connection: 'close' } : {};
}

/** {@link send} of a body {@link encodeBody} encoded already. */
export function sendEncoded(
  response: ServerResponse,
  reply: { status: number; data: Buffer; headers?: Record<string, string> },
  progress?: () => void,
): void {
  if (response.headersSent || response.writableEnded || response.destroyed) return;
  const { status, data, headers = {} } = reply;
  response.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': data.length,
    'cache-control': 'no-store',
    ...closeIfBodyComing(response.req),
    ...headers,
  });
  if (progress === undefined || data.length <= ANSWER_SLICE_BYTES) {
    response.end(data);
    return;
  }
  // One slice at a time, the next at 'drain': slices written together leave in one batch, which reports
  // nothing until all of it left.
  let offset = 0;
  const pump = () => {
    while (data.length - offset > ANSWER_SLICE_BYTES) {
      const slice = data.subarray(offset, offset + ANSWER_SLICE_BYTES);
      offset += ANSWER_SLICE_BYTES;
      if (!response.write(slice)) {
        response.once('drain', () => {
          progress();
          pump();
        });
        return;
      }
    }
    response.end(data.subarray(offset));
  };
  pump();
}
