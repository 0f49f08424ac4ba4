import { ErrorCode } from './codes.js';
import { isProgressError, ProgressError } from './progress-error.js';

/**
 * The options toolkit every package's resolver uses: one description per option (its default and its
 * check), the resolved type derived from the descriptions, and one rule for unknown keys (refused, naming
 * the nearest known option). TSDoc stays on each package's public options interface.
 *
 * @module
 */

/**
 * An options interface once resolved: every option present, none `undefined` (`Required` keeps the
 * `| undefined` an optional option declares under `exactOptionalPropertyTypes`).
 */
export type Resolved<T> = { [K in keyof T]-?: Exclude<T[K], undefined> };

/** One option: its default and how a value the caller passed is checked. */
export interface OptionSpec<T> {
  /** The value when the caller passes `undefined` or leaves the option out. */
  readonly default: T;
  /** Leaving the option out is an error (its default is never used). */
  readonly required?: boolean;
  /**
   * The accepted value, or throws `invalid_input` naming `where` (for example `ProgressServer:
   * leaseTtlMs`). Called with `undefined` only for a required option the caller left out.
   */
  readonly read: (value: unknown, where: string) => T;
}

/** A table of option descriptions, keyed by option name. */
export type OptionSpecs = { readonly [name: string]: OptionSpec<unknown> };

/** The options a table of descriptions resolves to. */
export type ResolvedOptionsOf<S extends OptionSpecs> = {
  -readonly [K in keyof S]: S[K] extends OptionSpec<infer T> ? T : never;
};

/** The `invalid_input` error of a bad option, prefixed with the component that refused it. */
export function invalidOption(component: string, message: string): ProgressError {
  return new ProgressError(ErrorCode.InvalidInput, `${component}: ${message}`);
}

/**
 * `<where> must be <expected>, got <value>`; functions and objects shown by their type only, strings quoted
 * (unquoted, the string '5' read as the number 5 the option asked for, and '' as nothing).
 */
function refused(where: string, expected: string, value: unknown): ProgressError {
  const shown =
    typeof value === 'string'
      ? JSON.stringify(value)
      : typeof value === 'function'
        ? 'a function'
        : value && typeof value === 'object'
          ? 'an object'
          : value;
  // String(): a symbol in the template threw a TypeError instead of this error.
  return new ProgressError(ErrorCode.InvalidInput, `${where} must be ${expected}, got ${String(shown)}`);
}

/**
 * An option checked by `test`; a refused value gets `<where> must be <expected>, got <value>`.
 */
export function option<T>(def: T, expected: string, test: (value: unknown) => boolean): OptionSpec<T> {
  return {
    default: def,
    read(value, where) {
      if (!test(value)) throw refused(where, expected, value);
      return value as T;
    },
  };
}

/** Throws `invalid_input` unless `value` is a number from `min` (to `max`); returns it. */
export function requireNumber(
  where: string,
  value: unknown,
  { min, max, integer = false }: { min?: number; max?: number | undefined; integer?: boolean } = {},
): number {
  if (
    typeof value !== 'number' ||
    !(integer ? Number.isSafeInteger(value) : Number.isFinite(value)) ||
    value < (min ?? value) ||
    value > (max ?? value)
  ) {
    const bound = min === undefined ? '' : max === undefined ? ` >= ${min}` : ` from ${min} to ${max}`;
    throw refused(where, (integer ? 'an integer' : 'a finite number') + bound, value);
  }
  return value;
}

/** A safe integer from `min` to `max` (counts, sizes, millisecond durations). */
export function integer(def: number, min: number, max?: number): OptionSpec<number> {
  return { default: def, read: (value, where) => requireNumber(where, value, { min, max, integer: true }) };
}

/** A finite number of at least `min` (durations that may be fractional, factors). */
export function finite(def: number, min: number): OptionSpec<number> {
  return { default: def, read: (value, where) => requireNumber(where, value, { min }) };
}

/** `true` or `false`. */
export function boolean(def: boolean): OptionSpec<boolean> {
  return option(def, 'a boolean', (value) => typeof value === 'boolean');
}

/** One of a few strings. */
export function oneOf<const V extends string>(def: V, values: readonly V[]): OptionSpec<V> {
  return option(def, `one of '${values.join("', '")}'`, (value) => values.includes(value as V));
}

/** A function (hooks, clocks, factories). */
export function func<F>(def: F): OptionSpec<F> {
  return option(def, 'a function', (value) => typeof value === 'function');
}

/** `spec` with no default: the resolved value is `undefined` when the caller leaves it out. */
export function optional<T>(spec: OptionSpec<T>): OptionSpec<T | undefined> {
  return { default: undefined, read: spec.read };
}

/** An option with no default, checked by `test` (objects with a shape, unions). */
export function ofType<T>(expected: string, test: (value: unknown) => boolean): OptionSpec<T | undefined> {
  return option<T | undefined>(undefined, expected, test);
}

/** `spec` with a further check of the value it read (a rule between the fields of a group). */
export function refine<T>(spec: OptionSpec<T>, check: (value: T, where: string) => T): OptionSpec<T> {
  return { ...spec, read: (value, where) => check(spec.read(value, where), where) };
}

/** `spec` that the caller must pass. */
export function required<T>(spec: OptionSpec<T | undefined>): OptionSpec<T> {
  return { default: undefined as T, required: true, read: spec.read as OptionSpec<T>['read'] };
}

/** A nested group of options (`reconnect: { … }`), resolved by the same rules as the top level. */
export function nested<S extends OptionSpecs>(specs: S): OptionSpec<ResolvedOptionsOf<S>> {
  return {
    default: Object.freeze(defaultsOf(specs)),
    read: (value, where) => readOptions(specs, value, where, `${where}.`, where),
  };
}

/** The defaults of a table of descriptions, as a fresh object. */
export function defaultsOf<S extends OptionSpecs>(specs: S): ResolvedOptionsOf<S> {
  const defaults: Record<string, unknown> = {};
  for (const name of Object.keys(specs)) defaults[name] = specs[name]?.default;
  return defaults as ResolvedOptionsOf<S>;
}

/**
 * Checks `options` against `specs` and lays what the caller passed over the defaults, without building
 * anything else. Unknown keys are refused, naming the nearest known option; `undefined` values take the
 * default.
 *
 * @param component - prefixes every message, for example `ProgressServer`.
 * @throws ProgressError `invalid_input` naming the first bad option.
 */
export function resolveOptions<S extends OptionSpecs>(
  component: string,
  specs: S,
  options: unknown,
): ResolvedOptionsOf<S> {
  // Leaving out the whole object is fine only when no option is required (delivery components).
  const anyRequired = Object.values(specs).some((spec) => spec.required === true);
  const given = options === undefined && !anyRequired ? {} : options;
  return readOptions(specs, given, component, `${component}: `, `${component}: options`);
}

function readOptions<S extends OptionSpecs>(
  specs: S,
  options: unknown,
  where: string,
  prefix: string,
  /** Names the object itself in the message when it is not one. */
  objectName: string,
): ResolvedOptionsOf<S> {
  // The caller's getters and Proxy traps run here (and in the options' checks): what they throw is the
  // caller's bad input, `invalid_input` naming the option read, as the stores' argument readers say it.
  // Bare, it left constructors and open() without a code.
  let at = objectName;
  try {
    if (typeof options !== 'object' || options === null || Array.isArray(options)) {
      throw refused(objectName, 'an object', options);
    }
    const given = options as Record<string, unknown>;
    const names = Object.keys(specs);
    for (const key of Object.keys(given)) {
      if (!Object.hasOwn(specs, key)) {
        const nearest = nearestName(key, names);
        throw new ProgressError(
          ErrorCode.InvalidInput,
          `${where}: unknown option "${key}"${nearest ? ` (did you mean \`${nearest}\`?)` : ''}`,
        );
      }
    }
    const resolved: Record<string, unknown> = {};
    for (const name of names) {
      at = prefix + name;
      const spec = specs[name] as OptionSpec<unknown>;
      const value = given[name];
      if (value !== undefined) resolved[name] = spec.read(value, at);
      else if (spec.required === true) {
        // The check's own message says what the option must be; a check that lets undefined pass still
        // cannot make a required option optional.
        resolved[name] = spec.read(undefined, at);
        if (resolved[name] === undefined) {
          throw new ProgressError(ErrorCode.InvalidInput, `${at} is required`);
        }
      } else resolved[name] = spec.default;
    }
    return resolved as ResolvedOptionsOf<S>;
  } catch (error) {
    if (isProgressError(error)) throw error;
    throw new ProgressError(
      ErrorCode.InvalidInput,
      `${at} threw${error instanceof Error ? `: ${error.message}` : ''}`,
      { cause: error },
    );
  }
}

/**
 * The known name closest to `name`, ignoring case: one whose letters it keeps in order or that keeps its
 * letters in order (`heartbeatMs` for `heartbeatIntervalMs`, a truncated or over-long name) first, else
 * the smallest edit distance; the first of equals. `undefined` when none is within an edit distance of
 * half the length of `name`: no hint is better than a wrong one (until 7 December 2026 `cookie` got
 * `token`, `signal` got `url`, whatever the distance).
 */
export function nearestName(name: string, known: readonly string[]): string | undefined {
  const target = name.toLowerCase();
  let best: string | undefined;
  // (Below this, in halves: a distance of at most half the length.)
  let bestDistance = (target.length + 1) / 2;
  for (const candidate of known) {
    const lower = candidate.toLowerCase();
    const distance =
      isSubsequence(target, lower) || isSubsequence(lower, target)
        ? Math.abs(lower.length - target.length) / 1000
        : editDistance(target, lower);
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best;
}

/** True when every character of `short` appears in `long` in the same order. */
function isSubsequence(short: string, long: string): boolean {
  let at = 0;
  for (const char of long) if (char === short[at]) at++;
  return at === short.length;
}

/** Levenshtein distance, one row at a time. */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(
        (previous[j] as number) + 1,
        (row[j - 1] as number) + 1,
        (previous[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    previous = row;
  }
  return previous[b.length] as number;
}

/** A copy of `value` without its `undefined` entries, so that spreading it over defaults keeps them. */
export function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, entry]) => entry !== undefined)) as Partial<T>;
}

/**
 * The `default` branch of an exhaustive `switch`: the compiler proves it unreachable, and a value from
 * outside the types (a newer peer, a cast) gets an `internal` error naming it instead of going unnoticed.
 */
export function exhaustive(value: never, what = 'value'): never {
  throw new ProgressError(ErrorCode.Internal, `Unknown ${what} ${String(value)}`);
}
