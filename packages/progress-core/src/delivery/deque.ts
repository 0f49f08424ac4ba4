/**
 * A growable ring buffer, the per-task entry list of the send queue.
 *
 * @module
 */

/** A growable ring buffer: O(1) at both ends, where an array's `shift`/`unshift` are O(n). */
export class Deque<T> {
  #items: Array<T | undefined> = new Array(8);
  #head = 0;
  #length = 0;

  get length(): number {
    return this.#length;
  }

  /** The element at `index` from the head, or `undefined` out of range. */
  at(index: number): T | undefined {
    if (index < 0 || index >= this.#length) return undefined;
    return this.#items[(this.#head + index) % this.#items.length];
  }

  push(item: T): void {
    this.#grow();
    this.#items[(this.#head + this.#length) % this.#items.length] = item;
    this.#length += 1;
  }

  unshift(item: T): void {
    this.#grow();
    this.#head = (this.#head - 1 + this.#items.length) % this.#items.length;
    this.#items[this.#head] = item;
    this.#length += 1;
  }

  shift(): T | undefined {
    if (this.#length === 0) return undefined;
    const item = this.#items[this.#head];
    this.#items[this.#head] = undefined;
    this.#head = (this.#head + 1) % this.#items.length;
    this.#length -= 1;
    return item;
  }

  pop(): T | undefined {
    if (this.#length === 0) return undefined;
    const index = (this.#head + this.#length - 1) % this.#items.length;
    const item = this.#items[index];
    this.#items[index] = undefined;
    this.#length -= 1;
    return item;
  }

  #grow(): void {
    if (this.#length < this.#items.length) return;
    const next: Array<T | undefined> = new Array(this.#items.length * 2);
    for (let i = 0; i < this.#length; i++) next[i] = this.#items[(this.#head + i) % this.#items.length];
    this.#items = next;
    this.#head = 0;
  }
}
