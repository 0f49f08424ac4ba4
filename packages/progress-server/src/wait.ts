/**
 * Bounded waiting for shutdown paths: a promise or a deadline, whichever comes first, with no timer left.
 *
 * @module
 */
/**
 * Resolves when `promise` settles (fulfilled or rejected) or after `ms` milliseconds, whichever comes
 * first, and leaves no timer behind either way. Used by graceful shutdown, which must never hang.
 */
export async function waitAtMost(promise: Promise<unknown>, ms: number): Promise<void> {
  if (ms <= 0) return;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  const settled = promise.then(
    () => undefined,
    () => undefined,
  );
  try {
    await Promise.race([settled, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The value `promise` resolves to, or `fallback` if it has not by `ms` milliseconds; leaves no timer
 * behind. `promise` must not reject.
 */
export async function settledWithin<T>(promise: Promise<T>, ms: number, fallback: T): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<T>((resolve) => {
    timer = setTimeout(() => resolve(fallback), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A promise resolved after `ms` milliseconds (for bounded polling loops during shutdown). */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => {
    setTimeout(resolve, Math.max(0, ms));
  });
}

/**
 * Like {@link delay}, but resolves at once when `signal` aborts (now or during the wait), clearing its
 * timer: a retry loop's pause that shutdown cuts short, so that no timer of it outlives `close()`.
 */
export function delayUnlessAborted(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, ms));
    signal.addEventListener('abort', done, { once: true });
  });
}
