import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type RawData, WebSocket, WebSocketServer } from 'ws';

/**
 * A WebSocket relay between a client and a real server that can drop, duplicate or hold frames and cut
 * connections, frame by frame: the network of the original bug reports, on demand. Every connection
 * through it opens its own upstream socket with the client's headers and subprotocols.
 */

/**
 * What to do with one server → client frame. A delay holds the frame *and every later frame of the same
 * connection* (a relay on TCP cannot reorder within a connection), so frames still arrive in order.
 */
export type FrameVerdict = 'pass' | 'drop' | 'duplicate' | 'cut' | { kind: 'delay'; ms: number };

/** One relayed connection. */
export interface ProxiedConnection {
  /** 1 for the first connection through the proxy, 2 for the next… */
  readonly number: number;
  /** Frames the client sent, as text. */
  readonly fromClient: string[];
  /** Frames the server sent, as text (including those dropped). */
  readonly fromServer: string[];
  /** Closes both sides at once, like a network failure. */
  cut(): void;
}

export class FaultProxy {
  readonly connections: ProxiedConnection[] = [];
  /** Decides the fate of each server → client frame. */
  onServerFrame: (frame: Record<string, unknown>, connection: ProxiedConnection) => FrameVerdict = () =>
    'pass';
  readonly #http: Server;
  readonly #wss: WebSocketServer;
  readonly #target: string;
  readonly #sockets = new Set<WebSocket>();
  /** Connection attempts to refuse (HTTP 503 at the upgrade) before accepting again. */
  refuseNext = 0;
  /** Upgrades refused so far. */
  refused = 0;

  private constructor(target: string) {
    this.#target = target;
    this.#http = createServer();
    this.#wss = new WebSocketServer({
      server: this.#http,
      handleProtocols: (protocols) => protocols.values().next().value ?? false,
      verifyClient: (_info, callback) => {
        if (this.refuseNext > 0) {
          this.refuseNext--;
          this.refused++;
          callback(false, 503);
        } else callback(true);
      },
    });
    this.#wss.on('connection', (client, request) => this.#relay(client, request));
  }

  /** Starts a proxy on a free port in front of `target` (a ws:// URL). */
  static async start(target: string): Promise<FaultProxy> {
    const proxy = new FaultProxy(target);
    await new Promise<void>((resolve) => proxy.#http.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  /** The proxy's ws:// URL, with the target's path. */
  get url(): string {
    const { port } = this.#http.address() as AddressInfo;
    return `ws://127.0.0.1:${port}${new URL(this.#target).pathname}`;
  }

  /** Frames the client sent on every connection, parsed. */
  clientFrames(): Record<string, unknown>[] {
    return this.connections.flatMap((connection) => connection.fromClient.map((text) => JSON.parse(text)));
  }

  async close(): Promise<void> {
    for (const socket of this.#sockets) socket.terminate();
    await new Promise<void>((resolve) => this.#wss.close(() => resolve()));
    await new Promise<void>((resolve) => this.#http.close(() => resolve()));
  }

  #relay(client: WebSocket, request: IncomingMessage): void {
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(request.headers)) {
      if (typeof value === 'string' && !/^(sec-websocket-|connection|upgrade|host)/i.test(name))
        headers[name] = value;
    }
    const protocols = String(request.headers['sec-websocket-protocol'] ?? '')
      .split(',')
      .map((protocol) => protocol.trim())
      .filter((protocol) => protocol !== '');
    const upstream = new WebSocket(this.#target, protocols, { headers });
    this.#sockets.add(client);
    this.#sockets.add(upstream);
    const pending: RawData[] = [];
    // Frames held by a delay, in order, each with the earliest time it may leave.
    const held: { text: string; at: number }[] = [];
    let drainTimer: NodeJS.Timeout | undefined;
    const drain = () => {
      drainTimer = undefined;
      while (held.length > 0 && (held[0]?.at ?? 0) <= Date.now()) {
        const frame = held.shift();
        if (frame !== undefined && client.readyState === WebSocket.OPEN) client.send(frame.text);
      }
      const head = held[0];
      if (head !== undefined) drainTimer = setTimeout(drain, Math.max(0, head.at - Date.now()));
      else closeAfterDrain?.();
    };
    // A server's close follows the data it sent before it, as on TCP.
    let closeAfterDrain: (() => void) | undefined;
    const deliver = (text: string, delayMs = 0) => {
      if (delayMs === 0 && held.length === 0) {
        if (client.readyState === WebSocket.OPEN) client.send(text);
        return;
      }
      const at = Math.max(Date.now() + delayMs, held.at(-1)?.at ?? 0);
      held.push({ text, at });
      if (drainTimer === undefined)
        drainTimer = setTimeout(drain, Math.max(0, (held[0]?.at ?? at) - Date.now()));
    };
    const cut = () => {
      held.length = 0;
      if (drainTimer !== undefined) clearTimeout(drainTimer);
      drainTimer = undefined;
      client.terminate();
      upstream.terminate();
    };
    const connection: ProxiedConnection = {
      number: this.connections.length + 1,
      fromClient: [],
      fromServer: [],
      cut,
    };
    this.connections.push(connection);

    client.on('message', (data) => {
      connection.fromClient.push(String(data));
      if (upstream.readyState === WebSocket.OPEN) upstream.send(String(data));
      else pending.push(data);
    });
    upstream.on('open', () => {
      for (const data of pending.splice(0)) upstream.send(String(data));
    });
    upstream.on('message', (data) => {
      const text = String(data);
      connection.fromServer.push(text);
      const verdict = this.onServerFrame(JSON.parse(text) as Record<string, unknown>, connection);
      if (typeof verdict === 'object') {
        deliver(text, Math.max(0, verdict.ms));
        return;
      }
      switch (verdict) {
        case 'pass':
          deliver(text);
          break;
        case 'duplicate':
          deliver(text);
          deliver(text);
          break;
        case 'drop':
          break;
        case 'cut':
          cut();
          break;
        default: {
          const unknown: never = verdict;
          throw new Error(`unknown verdict ${String(unknown)}`);
        }
      }
    });
    // Close codes pass through where the protocol allows sending them; anything else is a cut.
    const forward = (to: WebSocket, code: number, reason: Buffer) => {
      if (
        code === 1000 ||
        (code >= 3000 && code <= 4999) ||
        code === 1001 ||
        code === 1008 ||
        code === 1011
      ) {
        to.close(code, reason);
      } else to.terminate();
    };
    upstream.on('close', (code, reason) => {
      if (held.length === 0) forward(client, code, reason);
      else closeAfterDrain = () => forward(client, code, reason);
    });
    client.on('close', (code, reason) => forward(upstream, code, reason));
    upstream.on('error', () => client.terminate());
    client.on('error', () => upstream.terminate());
    const forget = () => {
      this.#sockets.delete(client);
      this.#sockets.delete(upstream);
    };
    client.on('close', () => {
      held.length = 0;
      if (drainTimer !== undefined) clearTimeout(drainTimer);
      drainTimer = undefined;
    });
    client.on('close', forget);
  }
}
