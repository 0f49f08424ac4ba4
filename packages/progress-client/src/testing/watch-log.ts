/**
 * Test-only: what one watch's application callbacks saw, checked as it happens — deliveries strictly
 * one seq after the other (a snapshot may jump forward), nothing after `finished` (no `error` either), at
 * most one terminal.
 * Shared by the fault-schedule property tests (model server and real server). Not shipped.
 *
 * @module
 */
import type { Watch } from '../watch.js';

export class WatchLog {
  /** Seq of the last delivery; a page starts at 0 (a restored one gets a snapshot first). */
  last = 0;
  delivered = false;
  /** Seq of the first snapshot (a restored cursor shows up as one). */
  firstSnapshot: number | undefined;
  /** Each terminal state seen, as `type@seq`. */
  readonly terminals: string[] = [];
  finished = 0;
  readonly problems: string[] = [];

  /** `failOnFatal`: a fatal error on the watch is a problem too (the real server never sends one here). */
  constructor(watch: Watch, options: { failOnFatal?: boolean } = {}) {
    const fail = (problem: string) => this.problems.push(problem);
    watch.on('snapshot', (state) => {
      if (this.finished > 0) fail('snapshot after finished');
      // A fresh watch may be told the state at seq 0; after that a snapshot must move forward.
      if (state.seq < this.last || (state.seq === this.last && this.delivered)) {
        fail(`snapshot@${state.seq} after ${this.last}`);
      }
      this.firstSnapshot ??= state.seq;
      this.last = state.seq;
      this.delivered = true;
    });
    const onEvent = (event: { seq: number }) => {
      if (this.finished > 0) fail(`event@${event.seq} after finished`);
      if (event.seq !== this.last + 1) fail(`event@${event.seq} after ${this.last}`);
      this.last = event.seq;
      this.delivered = true;
    };
    watch.on('progress', onEvent);
    watch.on('item', onEvent);
    for (const type of ['completed', 'failed', 'cancelled', 'interrupted'] as const) {
      watch.on(type, (event: { seq: number }, _state: unknown) => {
        this.terminals.push(`${type}@${event.seq}`);
        // A terminal state from a snapshot comes with the snapshot's own seq.
        if (this.last !== event.seq || !this.delivered) onEvent(event);
      });
    }
    watch.on('finished', () => {
      this.finished++;
    });
    watch.on('error', (error) => {
      if (this.finished > 0) fail(`error ${error.code} after finished`);
      if (options.failOnFatal === true && watch.getSnapshot().fatalError !== null)
        fail(`fatal ${error.code}: ${error.message}`);
    });
  }
}
