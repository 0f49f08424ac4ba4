/**
 * How long an answer from the other end takes, and after how long it is overdue: TCP's retransmission
 * timeout (RFC 6298), `SRTT + 4 · RTTVAR` with gains 1/8 and 1/4.
 *
 * The server keeps one {@link RoundTripEstimate} per socket, fed, for each terminal event that socket
 * acknowledged, the time from its first send to its acknowledgement; the socket's first re-send of an
 * unacknowledged terminal event waits at least that timeout: when the server or its clients are loaded
 * and acks take 200 ms, a fixed 100 ms re-sent every terminal event two or three times over (each re-send
 * a frame, a decode and a re-ack: more load), as a TCP sender without an adaptive timeout would. Samples
 * are taken from the first send even when the event was re-sent since, so a timeout that is too short
 * lengthens itself (the sample then covers the re-sends' wait), which is what Karn's rule achieves for
 * TCP by other means.
 *
 * A watcher usually receives one terminal event per task, often none yet on a new socket, while the
 * delay that matters at load (the event loops of the server and of the clients) is shared by the
 * server's sockets: a socket that has no sample yet waits the {@link RoundTripPool}'s timeout, the lower
 * median of the timeouts of the principals whose sockets have one (a principal's vote is the timeout of
 * its socket that sampled last). One vote per principal and a median, not one estimate fed by every
 * socket: with a shared mean, a client that acknowledged its terminal frames a minute late made every
 * socket's first re-send wait 5 s instead of 100 ms, and one acknowledging them at once cut it toward
 * 100 ms for everyone on a loaded server. Now at least half the principals that voted must agree to move
 * it, however many sockets each opens.
 *
 * @module
 */

/** A running round-trip estimate and its timeout (TCP's, RFC 6298): how long a socket waits before a first terminal re-send. */
export class RoundTripEstimate {
  #smoothed: number | undefined;
  #variation = 0;

  /** One round trip took `ms` milliseconds. A negative or non-finite sample (a clock step) is ignored. */
  sample(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) return;
    if (this.#smoothed === undefined) {
      this.#smoothed = ms;
      this.#variation = ms / 2;
      return;
    }
    this.#variation = 0.75 * this.#variation + 0.25 * Math.abs(this.#smoothed - ms);
    this.#smoothed = 0.875 * this.#smoothed + 0.125 * ms;
  }

  /** Whether a sample was taken (before, {@link timeoutMs} is 0 and means nothing). */
  get sampled(): boolean {
    return this.#smoothed !== undefined;
  }

  /** `SRTT + 4 · RTTVAR` in milliseconds, or 0 before the first sample (the caller's floor applies). */
  get timeoutMs(): number {
    return this.#smoothed === undefined ? 0 : this.#smoothed + 4 * this.#variation;
  }
}

/** Buckets per doubling of the pool's histogram: a timeout is known to within 2^(1/4), 19%. */
const STEPS_PER_OCTAVE = 4;
/**
 * Bucket 0 holds timeouts up to 1 ms, bucket b > 0 those above 2^((b - 2) / 4) up to 2^((b - 1) / 4) ms, the
 * last one all from 2^31 ms (longer than any timer).
 */
const BUCKETS = 2 + 31 * STEPS_PER_OCTAVE;

/** A principal's vote in a {@link RoundTripPool}: its bucket, and how many of its sockets have voted. */
interface Voter {
  bucket: number;
  sockets: number;
}

/**
 * The server-wide first guess of a socket with no round-trip sample of its own: the lower median of the
 * votes, each the timeout of a voter (a principal: the timeout of its socket that sampled last, however
 * many sockets and samples it has), kept in a histogram of 2^(1/4) steps so that a vote moves in O(1) with
 * no allocation (one small record per voting principal). See the module comment.
 */
export class RoundTripPool {
  readonly #counts = new Uint32Array(BUCKETS);
  readonly #voters = new Map<string, Voter>();
  #votes = 0;
  #median = 0;
  #stale = false;

  /** The bucket of a timeout of `ms` milliseconds (a vote's handle for {@link move}). */
  static bucketOf(ms: number): number {
    if (!(ms > 1)) return 0;
    return Math.min(BUCKETS - 1, 1 + Math.ceil(STEPS_PER_OCTAVE * Math.log2(ms)));
  }

  /**
   * A socket of `voter` (a principal's id) votes bucket `to` ({@link RoundTripPool.bucketOf}); `joins`
   * on its first vote, which {@link leave} undoes when the socket closes. The voter's one vote moves to
   * `to`.
   */
  vote(voter: string, to: number, joins: boolean): void {
    const entry = this.#voters.get(voter);
    if (entry === undefined) {
      this.#voters.set(voter, { bucket: to, sockets: 1 });
      this.move(-1, to);
      return;
    }
    if (joins) entry.sockets += 1;
    this.move(entry.bucket, to);
    entry.bucket = to;
  }

  /** A socket of `voter` that voted closed: the voter's vote goes with its last such socket. */
  leave(voter: string): void {
    const entry = this.#voters.get(voter);
    if (entry === undefined) return;
    entry.sockets -= 1;
    if (entry.sockets > 0) return;
    this.#voters.delete(voter);
    this.move(entry.bucket, -1);
  }

  /**
   * One vote moves from bucket `from` (-1: a new vote) to `to` (-1: it is withdrawn); buckets come from
   * {@link RoundTripPool.bucketOf}. For a caller keeping its own voters ({@link vote} keeps principals).
   */
  move(from: number, to: number): void {
    if (from === to) return;
    if (from >= 0 && (this.#counts[from] ?? 0) > 0) {
      this.#counts[from] = (this.#counts[from] ?? 0) - 1;
      this.#votes -= 1;
    }
    if (to >= 0) {
      this.#counts[to] = (this.#counts[to] ?? 0) + 1;
      this.#votes += 1;
    }
    this.#stale = true;
  }

  /** Number of votes. */
  get votes(): number {
    return this.#votes;
  }

  /**
   * The lower median of the votes (the top of its bucket, so never below the timeouts it stands for), in
   * milliseconds, or 0 with no vote (the caller's floor applies).
   */
  get timeoutMs(): number {
    if (this.#stale) {
      this.#stale = false;
      let rank = (this.#votes - 1) >> 1;
      this.#median = 0;
      if (this.#votes > 0) {
        for (let bucket = 0; bucket < BUCKETS; bucket++) {
          rank -= this.#counts[bucket] ?? 0;
          if (rank < 0) {
            this.#median = 2 ** ((bucket === 0 ? 0 : bucket - 1) / STEPS_PER_OCTAVE);
            break;
          }
        }
      }
    }
    return this.#median;
  }
}
