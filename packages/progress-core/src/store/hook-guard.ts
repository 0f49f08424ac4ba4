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
 * so a broken logger cannot flood.
 */
export function guardHook<E>(
  hook: (error: E) => void,
  onFirstThrow: (thrown: unknown, reported: E) => void,
): (error: E) => void {
  let told = false;
  return (error) => {
    try {
      hook(error);
    } catch (thrown) {
      if (told) return;
      told = true;
      try {
        onFirstThrow(thrown, error);
      } catch {}
    }
  };
}

/** A thrown value as a short text, for a warning: its message, else `String()`, never a throw. */
export function describeThrown(value: unknown): string {
  if (value instanceof Error) return value.message;
  try {
    return String(value);
  } catch {
    return 'an unprintable value';
  }
}
