/**
 * A store's reporting hooks (`onError`), made safe to call from where nothing could catch what they throw.
 *
 * @module
 */

/**
 * Wraps a caller's reporting hook so that what it throws goes no further: stores report from timers,
 * socket handlers and worker listeners, where a throw became an uncaught exception (or stopped the work
 * that reported: a reconnect never scheduled, an append never settled). `onFirstThrow` hears the first
 * throw with the error being reported (a store tells it as a process warning); later throws are dropped,
 * so a broken logger cannot flood. A hook returning a promise that rejects counts as throwing.
 */
export function guardHook<E>(
  hook: (error: E) => void,
  onFirstThrow: (thrown: unknown, reported: E) => void,
): (error: E) => void {
  let told = false;
  const tell = (thrown: unknown, error: E): void => {
    if (told) return;
    told = true;
    try {
      onFirstThrow(thrown, error);
    } catch {}
  };
  return (error) => {
    try {
      const result: unknown = hook(error);
      // An `async` hook (one shipping the error somewhere) fails by rejecting: left unhandled, the
      // rejection ended the process (Node's default) at the store's first reported error.
      if (typeof (result as PromiseLike<unknown> | null)?.then === 'function') {
        (result as PromiseLike<unknown>).then(undefined, (thrown: unknown) => tell(thrown, error));
      }
    } catch (thrown) {
      tell(thrown, error);
    }
  };
}

/** Runs a reporting hook whose failures are dropped: what it throws, and a rejection of its promise. */
export function callQuietly<E>(hook: (error: E) => void, error: E): void {
  try {
    const result: unknown = hook(error);
    if (typeof (result as PromiseLike<unknown> | null)?.then === 'function') {
      (result as PromiseLike<unknown>).then(undefined, ignoreRejection);
    }
  } catch {}
}

const ignoreRejection = (): void => {};

/** A thrown value as a short text, for a warning: its message, else `String()`, never a throw. */
export function describeThrown(value: unknown): string {
  if (value instanceof Error) return value.message;
  try {
    return String(value);
  } catch {
    return 'an unprintable value';
  }
}
