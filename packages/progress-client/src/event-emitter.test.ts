import { describe, expect, it } from 'vitest';
import { EventEmitter } from './event-emitter.js';

interface Events {
  a: [n: number];
  b: [];
}

describe('EventEmitter', () => {
  it('calls listeners in order with the arguments; once runs once; off removes on and once listeners', () => {
    const emitter = new EventEmitter<Events>();
    const seen: string[] = [];
    const first = (n: number) => seen.push(`first ${n}`);
    const onceOnly = (n: number) => seen.push(`once ${n}`);
    emitter
      .on('a', first)
      .once('a', onceOnly)
      .on('a', (n) => seen.push(`last ${n}`));
    expect(emitter.emit('a', 1)).toBe(true);
    expect(emitter.emit('a', 2)).toBe(true);
    expect(seen).toEqual(['first 1', 'once 1', 'last 1', 'first 2', 'last 2']);
    emitter.off('a', first);
    const removedBeforeFiring = (n: number) => seen.push(`never ${n}`);
    emitter.once('a', removedBeforeFiring).off('a', removedBeforeFiring);
    seen.length = 0;
    emitter.emit('a', 3);
    expect(seen).toEqual(['last 3']);
    expect(emitter.listenerCount('a')).toBe(1);
    expect(emitter.emit('b')).toBe(false);
    emitter.removeAllListeners();
    expect(emitter.listenerCount('a')).toBe(0);
  });

  it('a listener added or removed during an emit takes effect from the next emit', () => {
    const emitter = new EventEmitter<Events>();
    const seen: string[] = [];
    const second = () => seen.push('second');
    emitter.on('b', () => {
      seen.push('first');
      emitter.off('b', second);
      emitter.on('b', () => seen.push('added'));
    });
    emitter.on('b', second);
    emitter.emit('b');
    expect(seen).toEqual(['first', 'second']);
  });
});
