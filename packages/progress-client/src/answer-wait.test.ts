import { describe, expect, it } from 'vitest';
import { AnswerWait } from './answer-wait.js';

describe('AnswerWait', () => {
  it('waits the longest wait until an answer was timed', () => {
    expect(new AnswerWait(1000).ms(0)).toBe(1000);
  });

  it('waits the smoothed answer time plus four deviations (RFC 6298), within 250 ms and the longest wait', () => {
    const wait = new AnswerWait(1000);
    wait.answered(100); // 100 + 4 × 50
    expect(wait.ms(0)).toBe(300);
    wait.answered(100); // deviation 0.75 × 50: 100 + 150
    expect(wait.ms(0)).toBe(250);
    for (let i = 0; i < 50; i++) wait.answered(2); // a fast server: the floor, never less
    expect(wait.ms(0)).toBe(250);
    for (let i = 0; i < 50; i++) wait.answered(5000); // a server slower than the longest wait: capped
    expect(wait.ms(0)).toBe(1000);
  });

  it('takes an answer timed across a clock set back as immediate', () => {
    const wait = new AnswerWait(1000);
    wait.answered(-5000);
    expect(wait.ms(0)).toBe(250);
    wait.answered(-5000);
    expect(wait.ms(0)).toBe(250);
  });

  it('never waits longer than the longest wait when that is below 250 ms', () => {
    const wait = new AnswerWait(100);
    wait.answered(1);
    expect(wait.ms(0)).toBe(100);
  });

  it('follows a server that slows down within a few answers', () => {
    const wait = new AnswerWait(10_000);
    for (let i = 0; i < 20; i++) wait.answered(10);
    expect(wait.ms(0)).toBe(250);
    const waits: number[] = [];
    for (let i = 0; i < 4; i++) {
      wait.answered(800);
      waits.push(Math.round(wait.ms(0)));
    }
    // Each slow answer lengthens the wait beyond it: a repeat is not sent while answers take this long.
    expect(waits[0]).toBeGreaterThan(800);
    expect(waits).toEqual([...waits].sort((a, b) => a - b));
  });

  it('doubles the wait for every subscribe after one went unanswered, until one sent once is answered', () => {
    const wait = new AnswerWait(1000);
    wait.answered(10);
    expect(wait.doublings(0)).toBe(0);
    wait.unanswered(0);
    wait.unanswered(0); // many subscribes sent together and unanswered together: one doubling
    expect(wait.doublings(0)).toBe(1);
    expect(wait.ms(wait.doublings(0))).toBe(500);
    wait.unanswered(1);
    expect(wait.doublings(0)).toBe(2);
    expect(wait.doublings(3)).toBe(3); // a task's own repeats count if more
    for (let i = 0; i < 10; i++) wait.unanswered(wait.doublings(0));
    expect(wait.doublings(0)).toBe(4); // 16 × at most
    expect(wait.doublings(9)).toBe(4);
    wait.answered(10);
    expect(wait.doublings(0)).toBe(0);
  });
});
