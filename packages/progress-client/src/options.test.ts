import { readFileSync } from 'node:fs';
import { ErrorCode, LIMITS } from '@finishline/core';
import { describe, expect, it, vi } from 'vitest';
import { compareTsdocDefaults } from '../../../scripts/tsdoc-defaults.mjs';
import { PROGRESS_CLIENT_DEFAULTS, type ProgressClientOptions, resolveOptions } from './options.js';
import { MemoryCursorStorage } from './persist.js';
import { FakeServer } from './testing/fake-server.js';

const WebSocket = new FakeServer().WebSocket;
const base: ProgressClientOptions = { url: 'wss://app.test/progress', WebSocket };

describe('client options', () => {
  it('states in the TSDoc of ProgressClientOptions the defaults it has', () => {
    const source = readFileSync(new URL('./options.ts', import.meta.url), 'utf8');
    const { checked, wrong } = compareTsdocDefaults(source, PROGRESS_CLIENT_DEFAULTS);
    expect(wrong).toEqual([]);
    expect(checked).toBeGreaterThanOrEqual(20);
  });

  it('takes URL objects for url and httpUrl, as their types say', () => {
    // The resolver always took a URL; the types took only a string, so
    // `url: new URL('/progress', location.href)` did not compile.
    const options: ProgressClientOptions = {
      url: new URL('https://app.test/progress'),
      httpUrl: new URL('https://api.test/progress/'),
      WebSocket,
    };
    expect(resolveOptions(options)).toMatchObject({
      url: 'wss://app.test/progress',
      httpUrl: 'https://api.test/progress',
    });
  });

  it('lowers the default first-retry ceiling to a smaller reconnect.maxDelayMs instead of refusing it', () => {
    expect(resolveOptions({ ...base, reconnect: { initialDelayMs: 20, maxDelayMs: 50 } })).toMatchObject({
      reconnectFirstDelayMs: 50,
      reconnect: { initialDelayMs: 20, maxDelayMs: 50, multiplier: 2 },
    });
  });

  it('exports the documented reconnect defaults, firstDelayMs included', () => {
    // Until 6 December 2026 `PROGRESS_CLIENT_DEFAULTS.reconnect.firstDelayMs` was `undefined`, where the
    // option's documentation (and the client) said 100.
    expect(PROGRESS_CLIENT_DEFAULTS.reconnect).toEqual({
      firstDelayMs: 100,
      initialDelayMs: 1000,
      maxDelayMs: 30_000,
      multiplier: 2,
    });
    expect(Object.isFrozen(PROGRESS_CLIENT_DEFAULTS.reconnect)).toBe(true);
    expect(resolveOptions(base).reconnectFirstDelayMs).toBe(PROGRESS_CLIENT_DEFAULTS.reconnect.firstDelayMs);
    // A firstDelayMs the caller chose is refused above maxDelayMs; the default follows a smaller one.
    expect(
      resolveOptions({ ...base, reconnect: { firstDelayMs: 50, maxDelayMs: 50, initialDelayMs: 50 } }),
    ).toMatchObject({
      reconnectFirstDelayMs: 50,
    });
    // (Left out as `undefined` by a JavaScript caller: the default.)
    const unset = { ...base, reconnect: { firstDelayMs: undefined, initialDelayMs: 20, maxDelayMs: 50 } };
    expect(resolveOptions(unset as unknown as ProgressClientOptions).reconnectFirstDelayMs).toBe(50);
    expect(() =>
      resolveOptions({ ...base, reconnect: { firstDelayMs: 51, initialDelayMs: 20, maxDelayMs: 50 } }),
    ).toThrow(/reconnect.firstDelayMs must not exceed reconnect.maxDelayMs/);
  });

  it('refuses an unknown option, naming the nearest one (the flat reconnect options of old included)', () => {
    expect(() => resolveOptions({ ...base, reconnectMaxDelayMs: 50 } as ProgressClientOptions)).toThrow(
      'ProgressClient: unknown option "reconnectMaxDelayMs" (did you mean `reconnect`?)',
    );
    expect(() => resolveOptions({ ...base, heartbeatTimeout: 5 } as ProgressClientOptions)).toThrow(
      'ProgressClient: unknown option "heartbeatTimeout" (did you mean `heartbeatTimeoutMs`?)',
    );
    // None rather than a wrong one: until 7 December 2026 `cookie` (a header of its own) got `token`.
    expect(() => resolveOptions({ ...base, cookie: 'sid=1' } as ProgressClientOptions)).toThrow(
      /^ProgressClient: unknown option "cookie"$/,
    );
  });

  it('refuses options whose reading throws (a getter, a Proxy trap) with invalid_input naming the option', () => {
    // Until 8 December 2026 the getter's own error left `new ProgressClient()` without a code.
    const broke = new Error('getter broke');
    const options = {
      ...base,
      get reconnect(): never {
        throw broke;
      },
    };
    expect(() => resolveOptions(options)).toThrow(
      expect.objectContaining({
        code: ErrorCode.InvalidInput,
        message: 'ProgressClient: reconnect threw: getter broke',
        cause: broke,
      }),
    );
  });

  it('exports frozen defaults, and merges them once', () => {
    expect(Object.isFrozen(PROGRESS_CLIENT_DEFAULTS)).toBe(true);
    const resolved = resolveOptions(base);
    expect(resolved).toMatchObject({ finishTimeoutMs: 3000, ackDelayMs: 1000, httpFallbackAfterAttempts: 3 });
    expect(resolved.storage).toBeUndefined();
    expect(
      resolveOptions({
        ...base,
        finishTimeoutMs: 500,
        ackDelayMs: undefined,
      } as unknown as ProgressClientOptions),
    ).toMatchObject({
      finishTimeoutMs: 500,
      ackDelayMs: 1000,
    });
  });

  it.each([
    [{ connectTimeoutMs: 0 }, /connectTimeoutMs must be a finite number >= 1/],
    [{ ackEvery: Number.NaN }, /ackEvery/],
    [{ finishTimeoutMs: -1 }, /finishTimeoutMs/],
    [{ heartbeatTimeoutMs: 0 }, /heartbeatTimeoutMs must be null or a number >= 1/],
    // Counts of attempts: until 5 December 2026 a fraction was taken (1.5 acted as 2).
    [{ errorAfterAttempts: 1.5 }, /errorAfterAttempts must be an integer >= 0, got 1.5/],
    [{ httpFallbackAfterAttempts: 0.5 }, /httpFallbackAfterAttempts must be an integer >= 0/],
    [
      { reconnect: { initialDelayMs: 5000, maxDelayMs: 1000 } },
      /initialDelayMs \(5000\) must not exceed maxDelayMs/,
    ],
    [{ reconnect: { firstDelayMs: 40_000 } }, /reconnect.firstDelayMs must not exceed reconnect.maxDelayMs/],
    [{ reconnect: { firstDelayMs: -1 } }, /reconnect.firstDelayMs must be a finite number >= 0/],
    [{ reconnect: { multiplier: 0.5 } }, /reconnect.multiplier must be a finite number >= 1/],
    [{ url: 'not a url' }, /url is not a valid absolute URL/],
    [{ url: 'ftp://app.test/' }, /ws: or wss:/],
    [{ url: 'wss://user:secret@app.test/' }, /must not carry credentials/],
    [{ httpUrl: 'ws://app.test/' }, /httpUrl must be an http\(s\) URL/],
    [{ token: 42 }, /token must be a string or a function/],
    // Before, accepted: every attempt failed as a token function that returns no credential does.
    [{ token: '' }, /token must have 1 to 8192 characters/],
    [{ headers: { cookie: 1 } }, /header values must be strings/],
    [{ persistence: 'local' }, /persistence must be/],
    [{ wakePingTimeoutMs: 0 }, /wakePingTimeoutMs must be a finite number >= 1/],
    [{ clockCheckIntervalMs: -1 }, /clockCheckIntervalMs/],
    [{ pageEvents: 'window' }, /pageEvents must be an object/],
    [{ shareAcrossTabs: true }, /shareAcrossTabs must be tabSharing\(\)/],
    [{ httpFallback: true }, /httpFallback must be httpFallback\(\) from @finishline\/client\/http/],
    [{ httpCredentials: 'always' }, /httpCredentials/],
    [{ WebSocket: null }, /no WebSocket implementation/],
  ] as [Record<string, unknown>, RegExp][])('refuses %j with invalid_input', (bad, message) => {
    const attempt = () => resolveOptions({ ...base, ...bad } as unknown as ProgressClientOptions);
    expect(attempt).toThrow(message);
    expect(attempt).toThrow(expect.objectContaining({ code: ErrorCode.InvalidInput }));
  });

  it('refuses a static token over maxTokenLength without quoting it (a credential), and takes one at the limit', () => {
    const token = 's'.repeat(LIMITS.maxTokenLength);
    expect(resolveOptions({ ...base, token }).token).toBe(token);
    // Before, accepted: every attempt failed as a token function that returns no credential does.
    const attempt = () => resolveOptions({ ...base, token: `${token}!` });
    expect(attempt).toThrow(
      expect.objectContaining({
        code: ErrorCode.InvalidInput,
        message: `ProgressClient: token must have 1 to ${LIMITS.maxTokenLength} characters`,
      }),
    );
  });

  it('says where there is no page (Node) that url and httpUrl must be absolute, and resolves a relative one in a page', () => {
    // Before 6 December 2026: "url is not a valid URL" for '/progress', which reads as valid.
    for (const name of ['url', 'httpUrl'])
      expect(() => resolveOptions({ ...base, [name]: '/progress' })).toThrow(
        expect.objectContaining({
          code: ErrorCode.InvalidInput,
          message: `ProgressClient: ${name} is not a valid absolute URL`,
        }),
      );
    vi.stubGlobal('location', { href: 'https://app.test/page' });
    try {
      expect(resolveOptions({ ...base, url: '/progress', httpUrl: '/api' })).toMatchObject({
        url: 'wss://app.test/progress',
        httpUrl: 'https://app.test/api',
      });
      expect(() => resolveOptions({ ...base, url: 'http://[' })).toThrow(
        'ProgressClient: url is not a valid URL',
      );
    } finally {
      vi.unstubAllGlobals();
    }
  });

  it('turns an http(s) URL into the socket URL and derives the HTTP base from the socket URL', () => {
    expect(resolveOptions({ ...base, url: 'https://app.test/progress' })).toMatchObject({
      url: 'wss://app.test/progress',
      httpUrl: 'https://app.test/progress',
    });
    expect(resolveOptions({ ...base, url: 'ws://app.test:8080/' }).httpUrl).toBe('http://app.test:8080');
  });

  it('takes a storage of @finishline/client/persist as persistence, and refuses an unbound CursorStorage', () => {
    const storage = new MemoryCursorStorage();
    const bound = vi.spyOn(storage, 'forServer');
    const { storage: cursors, url } = resolveOptions({ ...base, persistence: storage });
    // Bound to the client's resolved URL, which keys its cursors.
    expect(bound).toHaveBeenCalledWith(url);
    expect(url).toBe('wss://app.test/progress');
    expect(cursors).toBe(bound.mock.results[0]?.value);
    const own = { load: () => undefined, save: () => undefined, remove: () => undefined };
    expect(() => resolveOptions({ ...base, persistence: own } as unknown as ProgressClientOptions)).toThrow(
      /persistence must be sessionCursorStorage\(\) or persistCursors\(storage\) from @finishline\/client\/persist, or false, got an object/,
    );
  });
});
