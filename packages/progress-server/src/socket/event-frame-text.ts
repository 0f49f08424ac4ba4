/**
 * The encoded `event` frame of each event, computed once per process for every socket.
 *
 * @module
 */
import type { TaskEvent } from '@finishline/core';
import { encodeFrame } from '@finishline/core/internal';

/** An event's frame text, and its UTF-8 size once a byte bound weighed it. */
interface Frame {
  readonly text: string;
  bytes: number | undefined;
}

/**
 * The encoded `event` frame of each event, computed once per process. The task hub hands the same
 * (immutable) event object to every local subscriber, so a task watched by a thousand sockets costs one
 * `JSON.stringify` per event instead of a thousand. A WeakMap lets the frame go with the event.
 */
const frames = new WeakMap<TaskEvent, Frame>();

function frameOf(event: TaskEvent): Frame {
  let frame = frames.get(event);
  if (frame === undefined) {
    frame = { text: encodeFrame({ type: 'event', event }), bytes: undefined };
    frames.set(event, frame);
  }
  return frame;
}

/** The JSON text of `{ type: 'event', event }`. */
export function eventFrameText(event: TaskEvent): string {
  return frameOf(event).text;
}

/**
 * The bytes of {@link eventFrameText} in UTF-8, as the frame goes out: what the byte bounds
 * (`maxQueuedBytes`, `maxQueuedBytesPerPrincipal`, an event stream's held page, the hub's recent events)
 * count. The text's `length` counts UTF-16 units, and a character of CJK text is one unit but three bytes,
 * so weighed by it those bounds held up to three times their bytes. Measured once per event and cached, as
 * its text is (one `Buffer.byteLength`, about a tenth of the `JSON.stringify` before it), never per socket
 * that queues or sends it; the live path that writes an event at once does not weigh it at all.
 */
export function eventFrameBytes(event: TaskEvent): number {
  const frame = frameOf(event);
  frame.bytes ??= Buffer.byteLength(frame.text, 'utf8');
  return frame.bytes;
}
