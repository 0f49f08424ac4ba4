import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { propertyParams } from '../testing/property-config.js';
import { Deque } from './deque.js';

type Op = { op: 'push' | 'unshift'; value: number } | { op: 'shift' | 'pop' };

const opArbitrary: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ op: fc.constantFrom('push' as const, 'unshift' as const), value: fc.integer() }),
  fc.record({ op: fc.constantFrom('shift' as const, 'pop' as const) }),
);

describe('Deque', () => {
  it('behaves like an array under any mix of push, unshift, shift and pop (through growth and wrap-around)', () => {
    fc.assert(
      fc.property(fc.array(opArbitrary, { maxLength: 200, size: 'max' }), (ops) => {
        const deque = new Deque<number>();
        const model: number[] = [];
        for (const step of ops) {
          switch (step.op) {
            case 'push':
              deque.push(step.value);
              model.push(step.value);
              break;
            case 'unshift':
              deque.unshift(step.value);
              model.unshift(step.value);
              break;
            case 'shift':
              expect(deque.shift()).toBe(model.shift());
              break;
            case 'pop':
              expect(deque.pop()).toBe(model.pop());
              break;
          }
          expect(deque.length).toBe(model.length);
          expect(Array.from({ length: model.length }, (_, i) => deque.at(i))).toEqual(model);
          expect(deque.at(-1)).toBeUndefined();
          expect(deque.at(model.length)).toBeUndefined();
        }
      }),
      propertyParams(200),
    );
  });
});
