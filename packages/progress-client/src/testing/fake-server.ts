import type {
  ClientFrame,
  ItemResult,
  ProgressState,
  ServerFrame,
  TaskEvent,
  TaskStatus,
  TaskView,
  TerminalType,
} from '@finishline/core';
import { PROTOCOL_VERSION } from '@finishline/core';
import { EMPTY_PROGRESS } from '@finishline/core/internal';
import type { WebSocketConstructorLike, WebSocketLike } from '../options.js';

/**
 * Test support: an in-process fake of the server side of the socket, driven frame by frame by the test.
 *
 * @module
 */

/**
 * An in-process fake of the server side of the socket (centrifuge-js style): the client under test gets
 * `server.WebSocket`, and the test drives every socket by hand — open it, push frames, close it with a
 * code — and reads what the client sent. For exact protocol edge cases; the real server is tested
 * end to end elsewhere.
 *
 * @internal Test support, not part of the public API.
 */
export class FakeServer {
  /** Every socket the client created, oldest first. */
  readonly sockets: FakeSocket[] = [];

  /** The WebSocket constructor to inject into the client. */
  readonly WebSocket: WebSocketConstructorLike;

  constructor() {
    const sockets = this.sockets;
    this.WebSocket = class extends FakeSocket {
      constructor(url: string, protocols?: string | string[], options?: { headers: Record<string, string> }) {
        super(url, protocols, options);
        sockets.push(this);
      }
    };
  }

  /** The newest socket. */
  get last(): FakeSocket {
    const socket = this.sockets[this.sockets.length - 1];
    if (socket === undefined) throw new Error('the client opened no socket');
    return socket;
  }

  /** Opens the newest socket and says hello. */
  accept(heartbeatIntervalMs = 15_000): FakeSocket {
    const socket = this.last;
    socket.open();
    socket.push({ type: 'hello', protocol: PROTOCOL_VERSION, serverId: 'fake-1', heartbeatIntervalMs });
    return socket;
  }
}

/** One fake socket. The client calls `send`/`close`; the test calls the rest. */
export class FakeSocket implements WebSocketLike {
  readyState = 0;
  /** The subprotocol the server selected; set it before `open()` (`''`: unknown, taken as the newest). */
  protocol = '';
  onopen: ((event: object) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: object) => void) | null = null;
  /** Frames the client sent, parsed. */
  readonly sent: ClientFrame[] = [];
  /** `close()` calls of the client. */
  readonly closedWith: { code: number | undefined; reason: string | undefined }[] = [];

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
    readonly options?: { headers: Record<string, string> },
  ) {}

  send(data: string): void {
    if (this.readyState !== 1) throw new Error('send on a socket that is not open');
    this.sent.push(JSON.parse(data) as ClientFrame);
  }

  close(code?: number, reason?: string): void {
    this.closedWith.push({ code, reason });
    if (this.readyState === 3) return;
    this.readyState = 2;
    // Like a browser: the close event comes later.
    queueMicrotask(() => this.#finishClose(code ?? 1005, reason ?? ''));
  }

  /** Frames of one type the client sent. */
  frames<T extends ClientFrame['type']>(type: T): Extract<ClientFrame, { type: T }>[] {
    return this.sent.filter((frame): frame is Extract<ClientFrame, { type: T }> => frame.type === type);
  }

  /** Completes the upgrade. */
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  /** Delivers a frame (an object is JSON-encoded; a string is sent as is). */
  push(frame: ServerFrame | string): void {
    if (this.readyState !== 1) throw new Error('push on a socket that is not open');
    this.onmessage?.({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
  }

  /** The server (or the network) closes the socket. */
  serverClose(code = 1006, reason = ''): void {
    this.#finishClose(code, reason);
  }

  #finishClose(code: number, reason: string): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

/**
 * A task's log as a test server keeps it: appends events with gap-free seqs and renders snapshots.
 *
 * @internal Test support.
 */
export class FakeTask {
  readonly events: TaskEvent[] = [];
  #progress: ProgressState;
  #status: TaskStatus = 'running';
  #time: number;

  constructor(
    readonly id: string,
    total: number | null,
    readonly createdAt = Date.UTC(2026, 0, 1),
  ) {
    this.#progress = { ...EMPTY_PROGRESS, total };
    this.#time = createdAt;
  }

  get seq(): number {
    return this.events.length;
  }

  /** Appends a progress event. */
  progress(done: number, message: string | null = null): TaskEvent {
    this.#progress = { ...this.#progress, done, message };
    return this.#push({ type: 'progress' });
  }

  /** Appends an item event (counts it as finished). */
  item(key: string, ok = true): TaskEvent {
    const p = this.#progress;
    this.#progress = {
      ...p,
      done: p.done + 1,
      succeeded: p.succeeded + (ok ? 1 : 0),
      failed: p.failed + (ok ? 0 : 1),
      current: key,
    };
    const item: ItemResult = { key, ok, error: ok ? null : 'boom', detail: null };
    return this.#push({ type: 'item', item });
  }

  /** Appends the terminal event. */
  end(type: TerminalType = 'completed'): TaskEvent {
    this.#status = type;
    switch (type) {
      case 'completed':
        return this.#push({ type, result: { ok: true } });
      case 'failed':
        return this.#push({ type, error: { code: 'crash', message: 'worker crashed' } });
      case 'cancelled':
        return this.#push({ type, reason: 'user asked' });
      case 'interrupted':
        return this.#push({ type, reason: 'lease expired' });
      default: {
        const unknown: never = type;
        throw new Error(`unknown terminal type ${String(unknown)}`);
      }
    }
  }

  /** The task's snapshot now (or at an earlier seq, rebuilt from the log). */
  view(atSeq = this.seq): TaskView {
    const last = this.events[atSeq - 1];
    const progress = last === undefined ? { ...EMPTY_PROGRESS, total: this.#progress.total } : last.progress;
    const status: TaskStatus =
      last !== undefined && last.type !== 'progress' && last.type !== 'item' ? last.type : 'running';
    let result: TaskView['result'] = null;
    let error: TaskView['error'] = null;
    if (last?.type === 'completed') result = last.result;
    if (last?.type === 'failed') error = last.error;
    if (last?.type === 'cancelled') error = { code: 'cancelled', message: last.reason ?? 'cancelled' };
    if (last?.type === 'interrupted') error = { code: 'interrupted', message: last.reason };
    return {
      id: this.id,
      kind: 'batch_taint',
      status,
      ...progress,
      result,
      error,
      seq: atSeq,
      createdAt: this.createdAt,
      updatedAt: last?.time ?? this.createdAt,
      finishedAt: status === 'running' ? null : (last?.time ?? null),
    };
  }

  /** True once the terminal event was appended. */
  get ended(): boolean {
    return this.#status !== 'running';
  }

  #push(body: Record<string, unknown>): TaskEvent {
    this.#time += 1000;
    const event = {
      taskId: this.id,
      seq: this.events.length + 1,
      time: this.#time,
      progress: { ...this.#progress },
      ...body,
    } as unknown as TaskEvent;
    this.events.push(event);
    return event;
  }
}
