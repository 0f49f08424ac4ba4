import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';

/**
 * A WebSocket relay between a client and a real server that can drop, duplicate or hold frames in either
 * direction and cut connections, frame by frame: the network of the original bug reports, on demand. Every
 * connection through it opens its own upstream socket with the client's headers and subprotocols.
 */

/**
 * What to do with one frame (server → client or client → server). A delay holds the frame *and every later frame of the same
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
  /** Decides the fate of each client → server frame (acks, subscribes, pings…). */
  onClientFrame: (frame: Record<string, unknown>, connection: ProxiedConnection) => FrameVerdict = () =>
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
    const pending: string[] = [];
    // Frames held by a delay, per direction, in order, each with the earliest time it may leave.
    const toClient = outlet((text) => {
      if (client.readyState === WebSocket.OPEN) client.send(text);
    });
    const toServer = outlet((text) => {
      if (upstream.readyState === WebSocket.OPEN) upstream.send(text);
      else pending.push(text);
    });
    const cut = () => {
      toClient.clear();
      toServer.clear();
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

    const apply = (verdict: FrameVerdict, text: string, to: Outlet) => {
      if (typeof verdict === 'object') {
        to.deliver(text, Math.max(0, verdict.ms));
        return;
      }
      switch (verdict) {
        case 'pass':
          to.deliver(text);
          break;
        case 'duplicate':
          to.deliver(text);
          to.deliver(text);
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
    };
    client.on('message', (data) => {
      const text = String(data);
      connection.fromClient.push(text);
      let frame: Record<string, unknown>;
      try {
        frame = JSON.parse(text) as Record<string, unknown>;
      } catch {
        // Not JSON: relayed as is, for the server to refuse.
        toServer.deliver(text);
        return;
      }
      apply(this.onClientFrame(frame, connection), text, toServer);
    });
    upstream.on('open', () => {
      for (const text of pending.splice(0)) upstream.send(text);
    });
    upstream.on('message', (data) => {
      const text = String(data);
      connection.fromServer.push(text);
      apply(this.onServerFrame(JSON.parse(text) as Record<string, unknown>, connection), text, toClient);
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
    // A close follows the data sent before it, as on TCP.
    upstream.on('close', (code, reason) => toClient.whenDrained(() => forward(client, code, reason)));
    client.on('close', (code, reason) => toServer.whenDrained(() => forward(upstream, code, reason)));
    upstream.on('error', () => client.terminate());
    client.on('error', () => upstream.terminate());
    const forget = () => {
      this.#sockets.delete(client);
      this.#sockets.delete(upstream);
    };
    client.on('close', () => toClient.clear());
    upstream.on('close', () => toServer.clear());
    client.on('close', forget);
  }
}

/** One direction of a relayed connection: frames leave in order, a delayed frame holding back the rest. */
interface Outlet {
  deliver(text: string, delayMs?: number): void;
  /** Runs `then` once every held frame left (at once when none is held). */
  whenDrained(then: () => void): void;
  /** Forgets the held frames (the connection is gone). */
  clear(): void;
}

function outlet(send: (text: string) => void): Outlet {
  const held: { text: string; at: number }[] = [];
  let timer: NodeJS.Timeout | undefined;
  let drained: (() => void) | undefined;
  const drain = () => {
    timer = undefined;
    while (held.length > 0 && (held[0]?.at ?? 0) <= Date.now()) {
      const frame = held.shift();
      if (frame !== undefined) send(frame.text);
    }
    const head = held[0];
    if (head !== undefined) timer = setTimeout(drain, Math.max(0, head.at - Date.now()));
    else {
      const then = drained;
      drained = undefined;
      then?.();
    }
  };
  return {
    deliver(text, delayMs = 0) {
      if (delayMs === 0 && held.length === 0) {
        send(text);
        return;
      }
      const at = Math.max(Date.now() + delayMs, held.at(-1)?.at ?? 0);
      held.push({ text, at });
      timer ??= setTimeout(drain, Math.max(0, (held[0]?.at ?? at) - Date.now()));
    },
    whenDrained(then) {
      if (held.length === 0) then();
      else drained = then;
    },
    clear() {
      held.length = 0;
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      drained = undefined;
    },
  };
}
