/**
 * Test support: a `document` and a `window` (for the client's `pageEvents`) that a test fires page-life
 * events on. Not shipped.
 *
 * @module
 */

/** A `document` and a `window` the test fires events on, and the events the client listens to. */
export function fakePage() {
  const document = Object.assign(new EventTarget(), { visibilityState: 'visible' });
  const window = new EventTarget();
  const fire = (target: EventTarget, type: string, props: Record<string, unknown> = {}) =>
    target.dispatchEvent(Object.assign(new Event(type), props));
  return {
    sources: { document, window },
    hide: () => {
      document.visibilityState = 'hidden';
      fire(document, 'visibilitychange');
    },
    show: () => {
      document.visibilityState = 'visible';
      fire(document, 'visibilitychange');
    },
    online: () => fire(window, 'online'),
    resume: () => fire(document, 'resume'),
    pageshow: (persisted: boolean) => fire(window, 'pageshow', { persisted }),
  };
}
