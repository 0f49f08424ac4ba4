/**
 * The answer to a request body Express's JSON parser (body-parser) refused: the client's mistake, with a code
 * that says which. Every refusal but a malformed or too large body (a charset or content encoding it cannot
 * decode, a body shorter or longer than its Content-Length, a compressed body that does not inflate) reached
 * the error handler's fallback: answered with the parser's 4xx status but the code `internal` and the message
 * "internal error", and logged as a server error.
 */

/** What to answer: status, error code, message and extra fields of the JSON error. */
export interface BodyErrorAnswer {
  status: number;
  code: string;
  message: string;
  extra: Record<string, unknown>;
}

/** The answer to a body-parser refusal (or any error carrying a 4xx status); `undefined` for anything else. */
export function bodyErrorAnswer(error: unknown, defaultLimit: number): BodyErrorAnswer | undefined {
  const e = error as {
    status?: unknown;
    type?: unknown;
    limit?: unknown;
    charset?: unknown;
    encoding?: unknown;
  };
  if (typeof e !== 'object' || e === null) return undefined;
  const answer = (status: number, code: string, message: string, extra = {}) => ({
    status,
    code,
    message,
    extra,
  });
  switch (e.type) {
    case 'entity.parse.failed':
      return answer(400, 'invalid_json', 'the body is not valid JSON');
    case 'entity.too.large': {
      const limit = typeof e.limit === 'number' ? e.limit : defaultLimit;
      return answer(413, 'payload_too_large', `the body is larger than ${limit} bytes`, { limit });
    }
    case 'charset.unsupported':
      // The charset is the client's text, echoed back cut short.
      return answer(
        415,
        'unsupported_media_type',
        `the charset ${JSON.stringify(String(e.charset ?? '').slice(0, 40))} is not supported: send UTF-8`,
      );
    case 'encoding.unsupported':
      return answer(
        415,
        'unsupported_media_type',
        `the content encoding ${JSON.stringify(String(e.encoding ?? '').slice(0, 40))} is not supported`,
      );
    case 'request.size.invalid':
      return answer(400, 'invalid_input', 'the body does not match its Content-Length');
    case 'request.aborted':
      return answer(400, 'invalid_input', 'the request was aborted before its body was read');
  }
  // Any other refusal with a client-error status (a compressed body that does not inflate: 400 with zlib's
  // error, no type): still the client's, never `internal`.
  if (typeof e.status === 'number' && e.status >= 400 && e.status < 500) {
    return answer(
      e.status,
      e.status === 413 ? 'payload_too_large' : 'invalid_input',
      'the body could not be read',
    );
  }
  return undefined;
}
