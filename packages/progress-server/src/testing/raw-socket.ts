/**
 * A raw WebSocket client for the tests that talk to the server from docs/protocol.md alone: plain `ws` and
 * JSON, nothing from the Finishline client, so those tests check the document and not our own client.
 * Shared by raw-protocol-2.test.ts and raw-protocol-claims.test.ts. Not part of the package's public entry.
 *
 * @module
 */
import { expect } from 'vitest';
import WebSocket from 'ws';

export const WAIT = 10_000;
// biome-ignore lint/suspicious/noExplicitAny: frames are read as the document describes them, with no decoder typing them.
export type Frame = Record<string, any>;

export class Raw {
  readonly ws: WebSocket;
  readonly frames: Frame[] = [];
  readonly open: Promise<void>;
  readonly closed: Promise<{ code: number; reason: string }>;
  #waiters: Array<{ match: (f: Frame) => boolean; from: number; done: (f: Frame) => void }> = [];

  constructor(url: string, opts: { protocols?: string[]; headers?: Record<string, string> } = {}) {
    this.ws = new WebSocket(url, opts.protocols ?? ['finishline.v2', 'finishline.v1'], {
      headers: opts.headers ?? {},
    });
    this.open = new Promise((resolve, reject) => {
      this.ws.once('open', () => resolve());
      this.ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
      this.ws.once('error', reject);
    });
    this.open.catch(() => {});
    this.ws.on('error', () => {});
    this.closed = new Promise((resolve) =>
      this.ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })),
    );
    this.ws.on('message', (data, isBinary) => {
      expect(isBinary).toBe(false); // Transport: servers send text frames
      const frame = JSON.parse(data.toString()) as Frame;
      expect(typeof frame.type).toBe('string');
      this.frames.push(frame);
      const index = this.frames.length - 1;
      this.#waiters = this.#waiters.filter((w) => {
        if (index < w.from || !w.match(frame)) return true;
        w.done(frame);
        return false;
      });
    });
  }

  send(frame: Frame | string): void {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
  }

  /** The first frame from index `from` on matching `match`. */
  next(match: (f: Frame) => boolean, from = 0, timeoutMs = WAIT): Promise<Frame> {
    const found = this.frames.slice(from).find(match);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () =>
          reject(
            new Error(`no frame within ${timeoutMs} ms; last: ${JSON.stringify(this.frames.slice(-4))}`),
          ),
        timeoutMs,
      );
      this.#waiters.push({
        match,
        from,
        done: (f) => {
          clearTimeout(timer);
          resolve(f);
        },
      });
    });
  }

  /** Everything the server sent before the answer to a ping has arrived. */
  async sync(): Promise<number> {
    const id = `sync-${Math.random().toString(36).slice(2, 10)}`;
    this.send({ type: 'ping', id });
    await this.next((f) => f.type === 'pong' && f.requestId === id);
    return this.frames.length;
  }

  about(taskId: string): Frame[] {
    return this.frames.filter(
      (f) =>
        (f.type === 'event' && f.event.taskId === taskId) ||
        (f.type === 'snapshot' && f.task.id === taskId) ||
        (f.type === 'error' && f.taskId === taskId),
    );
  }

  close() {
    if (this.ws.readyState <= WebSocket.OPEN) this.ws.close();
    return this.closed;
  }
}
