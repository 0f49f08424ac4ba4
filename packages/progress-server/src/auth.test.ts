import type { IncomingMessage } from 'node:http';
import { ErrorCode, isProgressError } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { bearerToken, isOriginAllowed, type Principal, sameOrigin } from './auth.js';
import { Authenticator, queryToken } from './authenticator.js';

const request = (headers: Record<string, string>, url = '/progress') =>
  ({ headers, url }) as unknown as IncomingMessage;

/** A request that arrived over TLS (`socket.encrypted`, as on an `https.Server`). */
const tlsRequest = (headers: Record<string, string>) =>
  ({ headers, url: '/progress', socket: { encrypted: true } }) as unknown as IncomingMessage;

describe('isOriginAllowed', () => {
  it('same-origin compares scheme and port too (issue 10, item 3)', () => {
    const plain = { host: 'app.example:8080' };
    expect(isOriginAllowed(request({ ...plain, origin: 'https://app.example:8080' }), 'same-origin')).toBe(
      false,
    );
    expect(isOriginAllowed(tlsRequest({ ...plain, origin: 'http://app.example:8080' }), 'same-origin')).toBe(
      false,
    );
    expect(
      isOriginAllowed(request({ host: 'app.example', origin: 'http://app.example:80' }), 'same-origin'),
    ).toBe(true);
    expect(
      isOriginAllowed(tlsRequest({ host: 'app.example', origin: 'https://app.example' }), 'same-origin'),
    ).toBe(true);
    expect(
      isOriginAllowed(tlsRequest({ host: 'app.example:443', origin: 'https://app.example' }), 'same-origin'),
    ).toBe(true);
    expect(
      isOriginAllowed(request({ host: 'app.example', origin: 'http://app.example:8080' }), 'same-origin'),
    ).toBe(false);
    expect(
      isOriginAllowed(request({ host: 'app.example/x', origin: 'http://app.example' }), 'same-origin'),
    ).toBe(false);
  });

  it('same-origin compares the Origin host with the Host header, case-insensitively', () => {
    expect(
      isOriginAllowed(
        request({ host: 'App.example:8080', origin: 'http://app.example:8080' }),
        'same-origin',
      ),
    ).toBe(true);
    expect(
      isOriginAllowed(
        tlsRequest({ host: 'App.example:8080', origin: 'https://app.example:8080' }),
        'same-origin',
      ),
    ).toBe(true);
    expect(
      isOriginAllowed(request({ host: 'app.example', origin: 'https://app.example.evil' }), 'same-origin'),
    ).toBe(false);
    expect(
      isOriginAllowed(request({ host: 'app.example', origin: 'https://app.example:444' }), 'same-origin'),
    ).toBe(false);
    expect(isOriginAllowed(request({ origin: 'https://app.example' }), 'same-origin')).toBe(false);
    expect(isOriginAllowed(request({ host: 'app.example', origin: 'null' }), 'same-origin')).toBe(false);
  });

  it('allows requests without Origin (non-browser clients) under every policy', () => {
    for (const policy of ['same-origin', [], () => false] as const) {
      expect(isOriginAllowed(request({ host: 'x' }), policy)).toBe(true);
    }
  });

  it('matches lists exactly, and a throwing predicate refuses', () => {
    expect(isOriginAllowed(request({ origin: 'https://a.example' }), ['https://a.example'])).toBe(true);
    expect(isOriginAllowed(request({ origin: 'https://a.example/' }), ['https://a.example'])).toBe(false);
    expect(
      isOriginAllowed(request({ origin: 'https://a.example' }), () => {
        throw new Error('bug');
      }),
    ).toBe(false);
    expect(isOriginAllowed(request({ origin: 'https://anything' }), '*')).toBe(true);
  });

  it('refuses when an async predicate answers, and its rejection never goes unhandled', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const predicate = (async () => {
        throw new Error('origin lookup failed');
      }) as never;
      expect(isOriginAllowed(request({ origin: 'https://a.example' }), predicate)).toBe(false);
      await new Promise((resolve) => setImmediate(resolve));
      await new Promise((resolve) => setImmediate(resolve));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });
});

describe('sameOrigin', () => {
  const https = 'https://app.example';
  const proxied = (proto: string) =>
    request({ host: 'app.example', origin: https, 'x-forwarded-proto': proto });

  it('behind a proxy that terminates TLS, takes the scheme from X-Forwarded-Proto when told to trust it', () => {
    // The plain rule refuses the https page: the request reached the server over http.
    expect(isOriginAllowed(proxied('https'), 'same-origin')).toBe(false);
    expect(isOriginAllowed(proxied('https'), sameOrigin())).toBe(false);
    expect(isOriginAllowed(proxied('https'), sameOrigin({ trustProxy: true }))).toBe(true);
    // A chain of proxies: the first value is the client's side. Case is not significant.
    expect(isOriginAllowed(proxied('HTTPS, http'), sameOrigin({ trustProxy: true }))).toBe(true);
  });

  it('still compares host, port and the forwarded scheme itself', () => {
    const trusted = sameOrigin({ trustProxy: true });
    expect(isOriginAllowed(proxied('http'), trusted)).toBe(false);
    expect(
      isOriginAllowed(
        request({ host: 'app.example', origin: 'https://evil.example', 'x-forwarded-proto': 'https' }),
        trusted,
      ),
    ).toBe(false);
    expect(
      isOriginAllowed(
        request({ host: 'app.example:8443', origin: https, 'x-forwarded-proto': 'https' }),
        trusted,
      ),
    ).toBe(false);
    // A value that is no scheme is ignored: the connection's scheme (http here) decides.
    expect(isOriginAllowed(proxied('wss'), trusted)).toBe(false);
    expect(
      isOriginAllowed(
        request({ host: 'app.example', origin: 'http://app.example', 'x-forwarded-proto': 'ftp' }),
        trusted,
      ),
    ).toBe(true);
  });

  it('refuses an option of the wrong type', () => {
    let caught: unknown;
    try {
      sameOrigin({ trustProxy: 'yes' as unknown as boolean });
    } catch (error) {
      caught = error;
    }
    expect(isProgressError(caught) && caught.code === ErrorCode.InvalidInput).toBe(true);
  });

  it('refuses an unknown option, naming the nearest', () => {
    // `trustProxies` was ignored: the proxy stayed untrusted and every upgrade through it got 403.
    expect(() => sameOrigin({ trustProxies: true } as never)).toThrow(
      'sameOrigin: unknown option "trustProxies" (did you mean `trustProxy`?)',
    );
  });
});

describe('credentials', () => {
  it('reads bearer tokens and query tokens', () => {
    expect(bearerToken(request({ authorization: 'Bearer abc.def' }))).toBe('abc.def');
    expect(bearerToken(request({ authorization: 'bearer  xyz ' }))).toBe('xyz');
    expect(bearerToken(request({ authorization: 'Basic abc' }))).toBeUndefined();
    expect(queryToken(request({}, '/progress?token=t1&x=2'), 'token')).toBe('t1');
    expect(queryToken(request({}, '/progress?token='), 'token')).toBeUndefined();
    // Repeated, refused as the HTTP API refuses a repeated parameter it reads (the first was taken).
    expect(() => queryToken(request({}, '/progress?token=t1&token=t2'), 'token')).toThrow(
      expect.objectContaining({ code: 'invalid_input' }),
    );
  });
});

describe('Authenticator', () => {
  function withLog() {
    const warnings: { fields: Record<string, unknown>; message: string | undefined }[] = [];
    const noop = () => undefined;
    const logger = {
      debug: noop,
      info: noop,
      error: noop,
      warn: (fields: Record<string, unknown>, message?: string) => {
        warnings.push({ fields, message });
      },
    };
    return { logger, warnings };
  }

  /** An Authenticator whose every request is the principal of id `id()`, authorized, warning to `logger`. */
  function authenticatorOf(id: () => string, logger: ReturnType<typeof withLog>['logger']) {
    return new Authenticator<Principal>({
      authenticate: () => ({ id: id() }),
      authenticateToken: undefined,
      authorize: () => true,
      tokenQueryParam: false,
      logger,
    });
  }

  it('warns once when a principal’s id can own no task (an identity provider’s subject such as auth0|…)', async () => {
    const { logger, warnings } = withLog();
    let id = 'auth0|5f7c8ec7c33c6c004bbafe82';
    const auth = authenticatorOf(() => id, logger);
    // Accepted as before (a custom `authorize` may not look at owners at all), but said: the default
    // authorization compares it with task owners, which may never hold it, and `GET …/tasks` refuses it.
    expect(await auth.fromHttp(request({}))).toEqual({ id });
    expect(await auth.fromHttp(request({}))).toEqual({ id });
    id = 'alice@example.com';
    expect(await auth.fromHttp(request({}))).toEqual({ id });
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.message).toContain('can own no task');
    expect(warnings[0]?.fields).toEqual({ principalId: 'auth0|5f7c8ec7c33c6c004bbafe82' });
  });

  it.each(['__proto__', 'constructor', 'prototype'])(
    'warns about a principal id of a reserved name (%s): it matches the pattern but can own no task',
    async (id) => {
      const { logger, warnings } = withLog();
      const auth = authenticatorOf(() => id, logger);
      expect(await auth.fromHttp(request({}))).toEqual({ id });
      expect(warnings).toHaveLength(1);
      expect(warnings[0]?.message).toContain('can own no task');
    },
  );
});
