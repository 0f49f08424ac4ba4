/**
 * The fair scheduler of subscription reads: bounds per principal and in total, round-robin turns.
 *
 * @module
 */
import type { Clock } from '@finishline/core';
import { systemClock } from '@finishline/core';
import { shuttingDown } from '../shutting-down.js';

/**
 * How often, at most, the whole of the queues is swept for superseded reads (ms). A sweep asks every
 * queued read whether it went stale; once per turn of the loop, a reconnect storm with thousands of reads
 * queued spent 2 % of a replica's time on it (x30 with a cut per socket, `PEERS_CPU_PROF_WINDOW`). A stale
 * read at the head of its queue is answered at once anyway; one further back waits at most this long.
 */
export const STALE_SWEEP_INTERVAL_MS = 50;
/** One queued read. */
interface Job {
  readonly read: () => Promise<unknown>;
  /** The caller no longer needs the result (a resubscribe superseded it): run at once, uncounted. */
  readonly stale: () => boolean;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: unknown) => void;
}

/** The reads of one principal. */
interface Lane {
  readonly queue: Job[];
  active: number;
}

/**
 * Schedules the store reads that sockets make for their own subscriptions and Server-Sent Events streams
 * for themselves (the task load of a subscribe or a stream, catch-up reads) so that one principal cannot
 * crowd out the others:
 *
 * - at most `maxConcurrent` such reads are in flight at once, all principals together, which leaves
 *   the store's pool (Postgres) free for appends and for the hub's live reads, which do not queue here;
 * - at most `maxPerPrincipal` of them belong to one principal while another principal has reads queued
 *   or in flight. A principal alone may borrow the idle slots but one (`maxConcurrent - 1`), so a
 *   newcomer's first read still starts at once: the cap is there to share the slots, and leaving them
 *   idle helped nobody. The chaos suite, all of whose watchers are one principal, had subscribes
 *   unanswered for up to 4.9 s after failovers: its reads ran one at a time, back to back (about 1 s of
 *   read time per second on each replica), while three of the four slots stayed idle;
 * - in one turn of the event loop at most one read of a principal starts; the next waits for the next
 *   turn (`setImmediate`), after pending I/O such as other principals' frames and live events. A turn
 *   then holds at most one read per principal together with what its caller does with the result (a
 *   synchronous store like SQLite resolves at once, and the catch-up that follows — queueing and
 *   sending up to a hundred events — runs in the same turn). An earlier budget of 1 ms of read time
 *   per turn left that processing out, and a principal resubscribing at its frame budget still held
 *   the loop for several milliseconds at a time;
 * - principals take turns (round-robin), and a read whose subscription was superseded while it waited
 *   is answered without I/O (at once from the head of its queue, within {@link STALE_SWEEP_INTERVAL_MS}
 *   from further back), so resubscribing cannot pile up work.
 *
 * Unloaded, a principal's first read starts at once, in the same turn; its pipelined subscribes follow
 * one per turn, which an idle loop turns over in microseconds.
 */
export class FairReads {
  readonly #maxConcurrent: number;
  readonly #maxPerPrincipal: number;
  /** Lanes with work, in turn order (a `Map` iterates in insertion order; a served lane moves last). */
  readonly #lanes = new Map<string, Lane>();
  /** Principals that started a read in the current turn of the loop. */
  readonly #servedThisTurn = new Set<string>();
  readonly #clock: Clock;
  /** When the queues were last swept for stale reads (clock ms). */
  #sweptAt = Number.NEGATIVE_INFINITY;
  #active = 0;
  #nextTurn: NodeJS.Immediate | undefined;
  #closed = false;

  /** `clock` (default `Date.now`) paces the sweeps for stale reads (see {@link STALE_SWEEP_INTERVAL_MS}). */
  constructor(options: { maxConcurrent: number; maxPerPrincipal: number; clock?: Clock }) {
    this.#maxConcurrent = options.maxConcurrent;
    this.#maxPerPrincipal = options.maxPerPrincipal;
    this.#clock = options.clock ?? systemClock;
  }

  /** Reads waiting for their turn, all principals together. */
  get queued(): number {
    let total = 0;
    for (const lane of this.#lanes.values()) total += lane.queue.length;
    return total;
  }

  /** Principals with reads queued or in flight (for tests and diagnostics). */
  get principals(): number {
    return this.#lanes.size;
  }

  /**
   * Runs `read` on behalf of `principalId` when its turn comes; settles as `read` does. A job that
   * became `stale` while queued is run (its `read` is expected to answer at once, without I/O) ahead of
   * its turn and outside the limits.
   */
  run<T>(principalId: string, read: () => Promise<T>, stale: () => boolean = () => false): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.#closed) {
        this.#refuse({ read, stale, resolve: resolve as (value: unknown) => void, reject });
        return;
      }
      let lane = this.#lanes.get(principalId);
      if (lane === undefined) {
        lane = { queue: [], active: 0 };
        this.#lanes.set(principalId, lane);
      }
      lane.queue.push({ read, stale, resolve: resolve as (value: unknown) => void, reject });
      this.#pump();
    });
  }

  /**
   * Stops starting reads. Queued ones never run: each is answered now (see `#refuse`), as is any read asked
   * for later. Left queued, they never settled: a subscribe's load, a stream's catch-up or a route's read
   * that waited for a slot (every slot held by a store that hangs) waited for ever after the server
   * closed, holding its socket's state. Reads in flight settle as their store does.
   */
  close(): void {
    this.#closed = true;
    if (this.#nextTurn !== undefined) clearImmediate(this.#nextTurn);
    this.#nextTurn = undefined;
    for (const [principalId, lane] of this.#lanes) {
      for (const job of lane.queue.splice(0)) this.#refuse(job);
      if (lane.active === 0) this.#lanes.delete(principalId);
    }
  }

  /**
   * A read the closed scheduler will not start: a superseded one is answered as ever (without I/O), any
   * other refused `closed`, as the server refuses work once it shuts down.
   */
  #refuse(job: Job): void {
    if (job.stale()) this.#settle(job);
    else job.reject(shuttingDown());
  }

  /** Starts what the limits allow now, in turn order; leaves the rest for a completion or the next turn. */
  #pump(): void {
    if (this.#closed) return;
    if (this.#active >= this.#maxConcurrent) {
      // No read starts, so no turn comes to sweep the queues: while every slot was held (a store whose
      // reads hang), the reads of sockets that left meanwhile, each holding its socket's state, piled up
      // with their principals' lanes for as long as it lasted. Each new read sweeps instead.
      this.#sweepStale();
      return;
    }
    let waitingForTurn = false;
    let progressed = true;
    while (progressed && this.#active < this.#maxConcurrent) {
      progressed = false;
      // The map itself, not a copy: with a principal per browser there are thousands of lanes, and a pass
      // that stops once the slots are full then visits only the lanes ahead of the first it can serve
      // (copying them all at every call cost a replica 1–2 % in a reconnect storm). Served lanes move to
      // the back of the turn order after the pass.
      const served: Array<[string, Lane]> = [];
      for (const [principalId, lane] of this.#lanes) {
        // Superseded reads at the head go at once; the rest of the queue is swept at a turn, at most every
        // STALE_SWEEP_INTERVAL_MS.
        while (lane.queue[0]?.stale() === true) this.#settle(lane.queue.shift() as Job);
        if (lane.queue.length === 0) {
          if (lane.active === 0) this.#lanes.delete(principalId);
          continue;
        }
        if (this.#active >= this.#maxConcurrent) break;
        if (lane.active >= this.#capOf(principalId)) continue;
        if (this.#servedThisTurn.has(principalId)) {
          waitingForTurn = true;
          continue;
        }
        served.push([principalId, lane]);
        this.#start(principalId, lane, lane.queue.shift() as Job);
        progressed = true;
      }
      for (const [principalId, lane] of served) {
        if (this.#lanes.get(principalId) !== lane) continue;
        this.#lanes.delete(principalId);
        this.#lanes.set(principalId, lane);
      }
    }
    if (waitingForTurn) this.#scheduleTurn();
  }

  /** How many reads `principalId` may have in flight now (see the class). */
  #capOf(principalId: string): number {
    const alone = this.#lanes.size === 1 && this.#lanes.has(principalId);
    return alone ? Math.max(this.#maxPerPrincipal, this.#maxConcurrent - 1) : this.#maxPerPrincipal;
  }

  /** A new turn of the loop: every principal may start a read again. */
  #scheduleTurn(): void {
    if (this.#nextTurn !== undefined || this.#closed) return;
    this.#nextTurn = setImmediate(() => {
      this.#nextTurn = undefined;
      this.#servedThisTurn.clear();
      this.#sweepStale();
      this.#pump();
    });
  }

  /**
   * Answers every queue's superseded reads, and forgets the principals left with nothing queued or in
   * flight, at most every {@link STALE_SWEEP_INTERVAL_MS}.
   */
  #sweepStale(): void {
    let now: number;
    try {
      now = this.#clock();
    } catch {
      // A clock that throws (the server's, refusing a NaN it returned once) skips this sweep: a later turn
      // sweeps. Thrown on, it left a turn's callback (an uncaught exception, which ends a Node process by
      // default), the turn's reads never started (queued until another read ended), or it failed the
      // read asked for while every slot was held, queued all the same.
      return;
    }
    if (now - this.#sweptAt < STALE_SWEEP_INTERVAL_MS) return;
    this.#sweptAt = now;
    for (const [principalId, lane] of this.#lanes) {
      this.#settleStale(lane);
      if (lane.queue.length === 0 && lane.active === 0) this.#lanes.delete(principalId);
    }
  }

  /** Answers the lane's stale jobs now (their reads do no I/O) and keeps the others in order. */
  #settleStale(lane: Lane): void {
    if (!lane.queue.some((job) => job.stale())) return;
    const live: Job[] = [];
    for (const job of lane.queue) {
      if (!job.stale()) {
        live.push(job);
        continue;
      }
      this.#settle(job);
    }
    lane.queue.splice(0, lane.queue.length, ...live);
  }

  /** Runs a stale job's read, which answers without I/O, outside the limits. */
  #settle(job: Job): void {
    try {
      job.read().then(job.resolve, job.reject);
    } catch (error) {
      job.reject(error);
    }
  }

  #start(principalId: string, lane: Lane, job: Job): void {
    this.#active += 1;
    lane.active += 1;
    this.#servedThisTurn.add(principalId);
    // The mark is per turn: a turn boundary clears it (cheap: one setImmediate per turn at most).
    this.#scheduleTurn();
    let reading: Promise<unknown>;
    try {
      reading = job.read();
    } catch (error) {
      reading = Promise.reject(error);
    }
    reading.then(job.resolve, job.reject).finally(() => {
      this.#active -= 1;
      lane.active -= 1;
      if (lane.active === 0 && lane.queue.length === 0 && this.#lanes.get(principalId) === lane) {
        this.#lanes.delete(principalId);
      }
      this.#pump();
    });
  }
}
