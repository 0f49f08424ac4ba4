import { describe, expect, it } from 'vitest';
import {
  boolean,
  defaultsOf,
  finite,
  func,
  integer,
  nearestName,
  nested,
  oneOf,
  option,
  optional,
  required,
  requireNumber,
  resolveOptions,
} from './options.js';
import { invalidInputMessage } from './testing/invalid-input.js';

describe('resolveOptions', () => {
  const specs = {
    heartbeatIntervalMs: integer(15_000, 1),
    ratio: finite(0.5, 0),
    verbose: boolean(false),
    mode: oneOf('fast', ['fast', 'safe']),
    hook: optional(func<() => void>(() => {})),
    reconnect: nested({ initialDelayMs: finite(250, 0), maxDelayMs: finite(10_000, 0) }),
  };

  it('gives the defaults for undefined or empty options, in a fresh object', () => {
    const defaults = defaultsOf(specs);
    expect(defaults).toEqual({
      heartbeatIntervalMs: 15_000,
      ratio: 0.5,
      verbose: false,
      mode: 'fast',
      hook: undefined,
      reconnect: { initialDelayMs: 250, maxDelayMs: 10_000 },
    });
    expect(resolveOptions('C', specs, undefined)).toEqual(defaults);
    expect(resolveOptions('C', specs, {})).not.toBe(resolveOptions('C', specs, {}));
  });

  it('lays defined values over the defaults, undefined ones keeping the default, nested ones merged', () => {
    const hook = () => {};
    expect(
      resolveOptions('C', specs, {
        heartbeatIntervalMs: 5,
        ratio: undefined,
        mode: 'safe',
        hook,
        reconnect: { maxDelayMs: 500 },
      }),
    ).toEqual({
      heartbeatIntervalMs: 5,
      ratio: 0.5,
      verbose: false,
      mode: 'safe',
      hook,
      reconnect: { initialDelayMs: 250, maxDelayMs: 500 },
    });
  });

  it('refuses an unknown key, naming the nearest known option, at the top and nested', () => {
    expect(invalidInputMessage(() => resolveOptions('C', specs, { heartbeatMs: 5 }))).toBe(
      'C: unknown option "heartbeatMs" (did you mean `heartbeatIntervalMs`?)',
    );
    expect(invalidInputMessage(() => resolveOptions('C', specs, { reconnect: { maxDelay: 5 } }))).toBe(
      'C: reconnect: unknown option "maxDelay" (did you mean `maxDelayMs`?)',
    );
  });

  it('names the option, what it must be and the value it got', () => {
    expect(invalidInputMessage(() => resolveOptions('C', specs, { heartbeatIntervalMs: 0 }))).toBe(
      'C: heartbeatIntervalMs must be an integer >= 1, got 0',
    );
    expect(invalidInputMessage(() => resolveOptions('C', specs, { verbose: 'yes' }))).toBe(
      'C: verbose must be a boolean, got "yes"',
    );
    expect(invalidInputMessage(() => resolveOptions('C', specs, { mode: 'slow' }))).toBe(
      "C: mode must be one of 'fast', 'safe', got \"slow\"",
    );
    expect(invalidInputMessage(() => resolveOptions('C', specs, { hook: {} }))).toBe(
      'C: hook must be a function, got an object',
    );
    expect(invalidInputMessage(() => resolveOptions('C', specs, { reconnect: { maxDelayMs: -1 } }))).toBe(
      'C: reconnect.maxDelayMs must be a finite number >= 0, got -1',
    );
    expect(invalidInputMessage(() => resolveOptions('C', specs, { reconnect: 5 }))).toBe(
      'C: reconnect must be an object, got 5',
    );
    expect(invalidInputMessage(() => resolveOptions('C', specs, 42))).toBe(
      'C: options must be an object, got 42',
    );
    expect(invalidInputMessage(() => resolveOptions('C', specs, null))).toBe(
      'C: options must be an object, got null',
    );
  });

  it('quotes a string it got, so that "5" is not taken for the number 5 the option wanted', () => {
    expect(invalidInputMessage(() => resolveOptions('C', specs, { heartbeatIntervalMs: '5' }))).toBe(
      'C: heartbeatIntervalMs must be an integer >= 1, got "5"',
    );
    expect(invalidInputMessage(() => resolveOptions('C', specs, { reconnect: { maxDelayMs: '' } }))).toBe(
      'C: reconnect.maxDelayMs must be a finite number >= 0, got ""',
    );
  });

  it('refuses a symbol with invalid_input, not a TypeError from its own message', () => {
    expect(invalidInputMessage(() => resolveOptions('C', specs, { verbose: Symbol('on') }))).toBe(
      'C: verbose must be a boolean, got Symbol(on)',
    );
  });

  it('refuses options whose reading throws (a getter, a Proxy trap) with invalid_input naming the option', () => {
    // Until 8 December 2026 the getter's or trap's own error left constructors and open() without a code.
    const broke = new Error('getter broke');
    const getter = {
      get verbose(): boolean {
        throw broke;
      },
    };
    let thrown: unknown;
    try {
      resolveOptions('C', specs, getter);
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toMatchObject({ code: 'invalid_input', cause: broke });
    expect((thrown as Error).message).toBe('C: verbose threw: getter broke');
    const nestedGetter = {
      reconnect: {
        get maxDelayMs(): number {
          throw broke;
        },
      },
    };
    expect(invalidInputMessage(() => resolveOptions('C', specs, nestedGetter))).toBe(
      'C: reconnect.maxDelayMs threw: getter broke',
    );
    const keysTrap = new Proxy(
      {},
      {
        ownKeys() {
          throw broke;
        },
      },
    );
    expect(invalidInputMessage(() => resolveOptions('C', specs, keysTrap))).toBe(
      'C: options threw: getter broke',
    );
    const { proxy, revoke } = Proxy.revocable({}, {});
    revoke();
    expect(invalidInputMessage(() => resolveOptions('C', specs, proxy))).toMatch(/^C: options threw: /);
    // Not a thrown string's `message`: the value itself is not shown (it could be anything).
    const stringThrower = {
      get mode(): string {
        throw 'nope';
      },
    };
    expect(invalidInputMessage(() => resolveOptions('C', specs, stringThrower))).toBe('C: mode threw');
    // An option's own refusal keeps its message.
    expect(invalidInputMessage(() => resolveOptions('C', specs, { verbose: 1 }))).toBe(
      'C: verbose must be a boolean, got 1',
    );
  });

  it('refuses a missing required option', () => {
    const withStore = { store: required(optional(func<() => void>(() => {}))) };
    expect(invalidInputMessage(() => resolveOptions('C', withStore, {}))).toBe(
      'C: store must be a function, got undefined',
    );
    expect(invalidInputMessage(() => resolveOptions('C', withStore, undefined))).toBe(
      'C: options must be an object, got undefined',
    );
    const lenient = { store: required(optional(option<unknown>(0, 'anything', () => true))) };
    expect(invalidInputMessage(() => resolveOptions('C', lenient, {}))).toBe('C: store is required');
    const store = () => {};
    expect(resolveOptions('C', withStore, { store }).store).toBe(store);
  });
});

describe('nearestName', () => {
  it('picks the known name with the smallest edit distance, ignoring case', () => {
    const known = ['pollIntervalMs', 'watermarkIntervalMs', 'maxBatchSize'];
    expect(nearestName('pollIntervalMS', known)).toBe('pollIntervalMs');
    expect(nearestName('maxbatch', known)).toBe('maxBatchSize');
    expect(nearestName('watermark', known)).toBe('watermarkIntervalMs');
  });

  it('names none when the nearest is more than half the name away: no hint is better than a wrong one', () => {
    const known = ['url', 'token', 'headers', 'fetch', 'port'];
    // Until 7 December 2026 each got the nearest, however far: `cookie` got `token`, `signal` got `url`.
    for (const far of ['cookie', 'signal', 'retry', 'auth', 'x', 'authorization'])
      expect(nearestName(far, known), far).toBeUndefined();
    expect(nearestName('prot', known)).toBe('port'); // 2 of 4
    expect(nearestName('hedaers', known)).toBe('headers');
    expect(nearestName('tokn', known)).toBe('token');
    expect(invalidInputMessage(() => resolveOptions('C', { token: boolean(false) }, { cookie: 'a=b' }))).toBe(
      'C: unknown option "cookie"',
    );
  });
});

describe('requireNumber', () => {
  it('returns a value that meets the constraint, the bound included', () => {
    expect(requireNumber('X', 0, { min: 0, integer: true })).toBe(0);
    expect(requireNumber('X', 2.5, { min: 1 })).toBe(2.5);
    expect(requireNumber('X', -3)).toBe(-3);
  });

  it('names the option, the expected kind and bound, and the value', () => {
    expect(invalidInputMessage(() => requireNumber('W: n', -1, { min: 0, integer: true }))).toBe(
      'W: n must be an integer >= 0, got -1',
    );
    expect(invalidInputMessage(() => requireNumber('W: n', 1.5, { integer: true }))).toBe(
      'W: n must be an integer, got 1.5',
    );
    expect(invalidInputMessage(() => requireNumber('W: x', 0.5, { min: 1 }))).toBe(
      'W: x must be a finite number >= 1, got 0.5',
    );
    expect(invalidInputMessage(() => requireNumber('W: x', Number.NaN))).toBe(
      'W: x must be a finite number, got NaN',
    );
    expect(invalidInputMessage(() => requireNumber('W: x', Number.POSITIVE_INFINITY))).toBe(
      'W: x must be a finite number, got Infinity',
    );
    expect(invalidInputMessage(() => requireNumber('W: x', '3'))).toBe(
      'W: x must be a finite number, got "3"',
    );
    expect(invalidInputMessage(() => requireNumber('W: n', 2 ** 53, { integer: true }))).toBe(
      `W: n must be an integer, got ${2 ** 53}`,
    );
    expect(invalidInputMessage(() => requireNumber('W: n', 11, { min: 1, max: 10, integer: true }))).toBe(
      'W: n must be an integer from 1 to 10, got 11',
    );
  });
});
