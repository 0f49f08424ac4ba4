import { expect } from 'vitest';

/**
 * Asserts what `toStrictEqual` asserts of decoded JSON — the same own keys (undefined-valued ones
 * included), the same prototypes, the same primitives by `Object.is` — without reading any node's
 * `constructor`: `toStrictEqual` compares `a.constructor === b.constructor`, so two equal payloads with
 * an own `constructor` key (`{"constructor": []}`, valid JSON a frame's `result` may carry) differ there by
 * the identity of their arrays. For comparing two decoders' outputs on arbitrary payloads.
 */
export function expectSameData(actual: unknown, expected: unknown, path = '$'): void {
  if (typeof expected !== 'object' || expected === null || typeof actual !== 'object' || actual === null) {
    expect(Object.is(actual, expected), `${path}: ${String(actual)} against ${String(expected)}`).toBe(true);
    return;
  }
  expect(Object.getPrototypeOf(actual), `${path}: prototype`).toBe(Object.getPrototypeOf(expected));
  const keys = Reflect.ownKeys(expected).map(String).sort();
  expect(Reflect.ownKeys(actual).map(String).sort(), `${path}: keys`).toEqual(keys);
  for (const key of keys) {
    expectSameData(
      (actual as Record<string, unknown>)[key],
      (expected as Record<string, unknown>)[key],
      `${path}.${key}`,
    );
  }
}
