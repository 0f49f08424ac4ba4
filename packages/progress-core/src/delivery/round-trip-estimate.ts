/**
 * How long an answer from the other end takes, and after how long it is overdue: TCP's retransmission
 * timeout (RFC 6298), `SRTT + 4 · RTTVAR` with gains 1/8 and 1/4.
 *
 * The server keeps one for all its sockets and feeds it, for each acknowledged terminal event, the time
 * from its first send to its acknowledgement. The first re-send of an unacknowledged terminal event then
 * waits at least that timeout: when the server or its clients are loaded and acks take 200 ms, a fixed
 * 100 ms re-sent every terminal event two or three times over (each re-send a frame, a decode and a
 * re-ack: more load), as a TCP sender without an adaptive timeout would. Samples are taken from the first
 * send even when the event was re-sent since, so a timeout that is too short lengthens itself (the
 * sample then covers the re-sends' wait), which is what Karn's rule achieves for TCP by other means.
 *
 * One estimate per server, not per socket: a watcher usually receives one terminal event per task, too
 * few to estimate its own connection, while the delay that matters at load (the event loops of the
 * server and of the clients) is shared by the server's sockets.
 *
 * @module
 */

/** A running round-trip estimate and its timeout (TCP's, RFC 6298): how long the server waits before a first terminal re-send. */
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

  /** `SRTT + 4 · RTTVAR` in milliseconds, or 0 before the first sample (the caller's floor applies). */
  get timeoutMs(): number {
    return this.#smoothed === undefined ? 0 : this.#smoothed + 4 * this.#variation;
  }
}
