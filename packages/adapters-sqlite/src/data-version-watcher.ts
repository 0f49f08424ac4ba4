/**
 * Detects commits made by other connections to the same database file — other processes, or other
 * stores in this process — by polling `PRAGMA data_version`. SQLite changes that value for a connection
 * whenever another connection committed since it last looked, and never for the connection's own
 * commits, so polling it costs one tiny read per interval and wakes the store only when there is news.
 * The store reads `total_changes()` with it, for another store sharing its connection (see
 * `ChangePublisher`).
 *
 * @module
 */

/** Options of {@link DataVersionWatcher}. */
export interface DataVersionWatcherOptions {
  /** Poll interval in milliseconds (≥ 1). */
  intervalMs: number;
  /**
   * Reads what moves when someone else committed: `PRAGMA data_version` on the store's connection, with
   * the connection's `total_changes()` beside it (see `ChangePublisher`).
   */
  readVersion: () => number | string;
  /** Called once per poll that saw a changed version. */
  onChange: () => void;
  /**
   * Receives what `readVersion` or `onChange` throws, once per streak of failed polls (again only after a
   * poll succeeded); polling goes on. Reported on every poll, a file that stayed unreadable (a disk
   * error, the file removed) logged 20 lines a second at the default interval.
   */
  onError: (error: unknown) => void;
}

/**
 * Polls `PRAGMA data_version` on an unref'd timer (it never keeps the process alive) and calls
 * `onChange` when another connection committed. `stop()` clears the timer.
 */
export class DataVersionWatcher {
  readonly #options: DataVersionWatcherOptions;
  #timer: ReturnType<typeof setInterval> | undefined;
  #version: number | string | undefined;
  #failures = 0;
  /** A failure was reported and no poll succeeded since: further failures of the streak are not. */
  #failing = false;

  constructor(options: DataVersionWatcherOptions) {
    this.#options = options;
  }

  /** Polls that failed since the watcher was made, reported or not. */
  get failures(): number {
    return this.#failures;
  }

  /** True while the timer runs. */
  get running(): boolean {
    return this.#timer !== undefined;
  }

  /** Starts polling; the current version is the baseline. No-op when already running. */
  start(): void {
    if (this.#timer !== undefined) return;
    this.#version = this.#options.readVersion();
    this.#timer = setInterval(() => this.check(), this.#options.intervalMs);
    this.#timer.unref();
  }

  /** Stops polling. Safe to call more than once. */
  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** Polls once now; returns whether the version changed (and `onChange` ran). */
  check(): boolean {
    try {
      const version = this.#options.readVersion();
      if (version === this.#version) {
        this.#failing = false;
        return false;
      }
      this.#version = version;
      this.#options.onChange();
      this.#failing = false;
      return true;
    } catch (error) {
      this.failed(error);
      return false;
    }
  }

  /**
   * A poll failed, or what `onChange` left for a later turn did (the rest of a backlog): reported once per
   * streak, and the next poll calls `onChange` again.
   */
  failed(error: unknown): void {
    // The next poll tries again, whether or not another commit comes: what `onChange` failed to read
    // would otherwise wait for one.
    this.#version = undefined;
    this.#failures += 1;
    if (!this.#failing) {
      this.#failing = true;
      this.#options.onError(error);
    }
  }
}
