import { ErrorCode, PROTOCOL_NAME, PROTOCOL_NAME_V1, ProgressError } from '@finishline/core';
import { CLOSE_HEARTBEAT_TIMEOUT } from '@finishline/core/internal';
import { noop } from './timers.js';
import type { WebSocketConstructorLike, WebSocketLike } from './transport-types.js';

/**
 * `@finishline/client/tabs`: one WebSocket per browser instead of one per tab.
 *
 * Every tab's {@link ProgressClient} runs its whole protocol (cursors, dedupe, resync, acks) as usual,
 * over a virtual socket. One tab, the leader (it holds a Web Lock), owns the real socket: it forwards
 * what the virtual sockets send and broadcasts what the server sends over a `BroadcastChannel`. Each
 * tab keeps its own cursors, so a frame meant for another tab, or replayed for another tab's resync, is
 * dropped by seq like any duplicate. When the leader tab goes away its lock passes to another tab, which
 * announces itself; every tab's virtual socket then closes, and its client reconnects and resumes from
 * its cursor through the new leader, as after any reconnect: nothing lost, nothing twice. A tab whose
 * clients are all closed leaves the same way while the page stays open: it lets go of its locks and
 * closes its channel.
 *
 * This module is a separate entry so pages that do not share pay nothing for it. It stays one file over
 * 400 lines on purpose: it is one leader/follower protocol, read as a whole. Every tab's hub handles
 * both sides' messages (the `Message` union) in one switch, and the leader part acts on what the
 * follower part posts to itself, so splitting the two would scatter each message's round trip.
 *
 * @module
 */

/** The part of `BroadcastChannel` used. */
export interface BroadcastChannelLike {
  onmessage: ((event: { data: unknown }) => void) | null;
  postMessage(message: unknown): void;
  close(): void;
}

/**
 * The part of `navigator.locks` (Web Locks) used. A request whose `signal` aborts before the lock is
 * granted leaves the queue (its promise rejects).
 */
export interface LockManagerLike {
  request(name: string, options: { signal: AbortSignal }, callback: () => Promise<unknown>): Promise<unknown>;
}

/** Options of {@link tabSharing}. */
export interface TabSharingOptions {
  /**
   * Prefix of the channel and lock names; tabs share a socket when prefix and URL are equal.
   * @default 'finishline:'
   */
  namePrefix?: string | undefined;
  /**
   * Opens a channel.
   * @default (name) => new BroadcastChannel(name)
   */
  channel?: ((name: string) => BroadcastChannelLike) | undefined;
  /**
   * The lock manager.
   * @default navigator.locks
   */
  locks?: LockManagerLike | undefined;
}

/** What the `shareAcrossTabs` option of `ProgressClientOptions` takes. */
export interface TabSharing {
  /**
   * Wraps the real WebSocket constructor in one whose sockets go through the leader tab. Once `closed`
   * aborts (`ProgressClient` passes a signal it aborts when it closes, for good), the constructor refuses
   * new sockets, and when no other client of the tab uses the URL the tab leaves: its locks are released
   * (a leader's lead passes to another tab) and its channel is closed. `client`: the client's options; one
   * without a `token` sends no `auth`, and behind a real socket that has one in force its sockets are its own
   * at once, where they waited their connect timeout for a `hello` they could not be handed.
   */
  wrap(
    WebSocket: WebSocketConstructorLike,
    closed?: AbortSignal,
    client?: { readonly token?: unknown },
  ): WebSocketConstructorLike;
}

/**
 * Shares one socket between the tabs of a browser (opt-in).
 *
 * @example
 * ```ts
 * import { ProgressClient } from '@finishline/client';
 * import { tabSharing } from '@finishline/client/tabs';
 *
 * const client = new ProgressClient({ url: '/progress', shareAcrossTabs: tabSharing() });
 * ```
 *
 * @throws ProgressError `invalid_input` where `BroadcastChannel` or `navigator.locks` is missing and none
 *   is given, or `channel` is not a function (a `BroadcastChannel` itself, say).
 */
export function tabSharing(options: TabSharingOptions = {}): TabSharing {
  const scope = globalThis as unknown as {
    BroadcastChannel?: new (name: string) => BroadcastChannelLike;
    navigator?: { locks?: LockManagerLike };
  };
  const Channel = scope.BroadcastChannel;
  const channel = options.channel ?? (Channel && ((name: string) => new Channel(name)));
  const locks = options.locks ?? scope.navigator?.locks;
  // Checked here, not when a socket first needs it: a BroadcastChannel given where its factory is asked for
  // made every socket the client opened throw a TypeError, and the client retried for ever.
  if (typeof channel !== 'function' || !locks) {
    throw new ProgressError(ErrorCode.InvalidInput, 'tabSharing: no channel factory or navigator.locks');
  }
  const env: HubEnv = { prefix: options.namePrefix ?? 'finishline:', channel, locks };
  const hubs = new Map<string, TabHub>();
  return {
    wrap(WebSocket, closed, client) {
      // Each hub this client's sockets went through is left when its last client closes. A signal, not the
      // client's `state` event: a page's `removeAllListeners()` cannot unhook it.
      closed?.addEventListener('abort', () => {
        for (const hub of hubs.values()) {
          if (!hub.users.delete(closed) || hub.users.size) continue;
          hubs.delete(hub.url);
          hub.leave();
        }
      });
      // A function, not a class: once the locks were refused it returns a real socket instead.
      function SharedWebSocket(
        url: string,
        ...rest: [protocols?: string | string[], options?: { headers: Record<string, string> }]
      ): WebSocketLike {
        if (closed?.aborted) throw new ProgressError(ErrorCode.Closed, 'tabSharing: client closed');
        const refused = env.refused;
        if (refused) {
          if (refused === true) return new WebSocket(url, ...rest);
          // Said once, through the client's `error` event (a socket it could not create); it retries.
          env.refused = true;
          throw refused;
        }
        const hub = hubs.get(url) ?? new TabHub(url, WebSocket, env);
        hubs.set(url, hub);
        hub.users.add(closed);
        // A leader tab that is frozen (Page Lifecycle: the browser keeps its locks held, it runs nothing)
        // answers nothing and lets no other tab lead: through it the client would retry for as long as it
        // stays frozen. Two sockets in a row that the client gave up on (4010: silent, or never opened),
        // with no word from any leader in between (a running leader answers the first by replacing its
        // real socket), say so: the client's sockets are its own until a leader speaks again.
        // Kept (the client's latest) to be closed once a leader runs again: see `own`.
        if (hub.silent > 1)
          return hub.own.set(closed, new WebSocket(url, ...rest)).get(closed) as WebSocketLike;
        // `-` for a client without a token; one that says nothing of its client is taken as having one.
        return new VirtualSocket(hub, (client?.token ?? !client) ? '' : '-');
      }
      return SharedWebSocket as unknown as WebSocketConstructorLike;
    },
  };
}

interface HubEnv {
  prefix: string;
  channel: (name: string) => BroadcastChannelLike;
  locks: LockManagerLike;
  /** The locks were refused: why, until it was said once; then `true` (every socket is a real one). */
  refused?: ProgressError | true;
}

/** Messages on the channel. `from` is the sending tab; socket ids start with their tab's id. */
type Message =
  | { t: 'leader'; from: string }
  | { t: 'connect'; from: string; id: string }
  | { t: 'send'; from: string; id: string; data: string; seen?: number | undefined }
  | { t: 'bye'; from: string; id: string; code: number; reason: string }
  | { t: 'open'; from: string; id: string; protocol: string }
  | { t: 'own'; from: string; id: string }
  | { t: 'frame'; from: string; data: string; hello?: boolean; to?: string | undefined; i: number }
  | {
      t: 'close';
      from: string;
      code: number;
      reason: string;
      ids?: string[];
      /** The one socket the close is for, the others closing with 1001 (see `#failReal`). */
      by?: string | undefined;
    };

/** A message as posted: `post` says which tab it is from. */
type Unsent = Message extends infer M ? (M extends Message ? Omit<M, 'from'> : never) : never;

/** `WebSocket.readyState`'s values (an enum esbuild inlines: bytes of the /tabs budget). */
enum State {
  CONNECTING = 0,
  OPEN = 1,
  CLOSED = 3,
}
/** Close codes of virtual sockets (an enum, as `State`). */
enum Close {
  /** The leader changed: not fatal, the clients reconnect. */
  LEADER_GONE = 1001,
}

/** A socket as the client sees it; the leader tab carries its frames. @internal */
class VirtualSocket implements WebSocketLike {
  readyState: number = State.CONNECTING;
  /** The real socket's subprotocol, so the client speaks the version the server selected. */
  protocol = '';
  // Declared, not set to null: the client sets each before anything calls it (bytes of the /tabs budget).
  declare onopen: ((event: object) => void) | null;
  declare onmessage: ((event: { data: unknown }) => void) | null;
  declare onclose: ((event: { code: number; reason: string }) => void) | null;
  /** Never fired: the leader reports a failure as a close. */
  declare onerror: ((event: object) => void) | null;
  declare readonly id: string;
  /** The leader that opened it. */
  declare leader: string | undefined;
  /** It got its `hello`: broadcast frames are for it from now on. */
  declare helloed?: boolean | undefined;
  /** The index of the last frame its client was handed: the leader tells by it what a send followed. */
  declare seen?: number;
  readonly #hub: TabHub;

  /** `suffix`: `-` for a client without a token (see `TabHub.attach`), else empty. */
  constructor(hub: TabHub, suffix: string) {
    this.#hub = hub;
    this.id = hub.attach(this, suffix);
  }

  send(data: string): void {
    if (this.readyState !== State.OPEN) throw new Error('not open');
    this.#hub.post({ t: 'send', id: this.id, data, seen: this.seen });
  }

  close(code = 1000, reason = ''): void {
    // Refused to the caller, as a browser's WebSocket does, before the leader would pass them on to the
    // real socket, whose close() would throw there.
    const badCode = code !== 1000 && !(code >= 3000 && code < 5000);
    if (badCode || new TextEncoder().encode(reason).length > 123)
      throw new DOMException(`close(${code}, reason)`, badCode ? 'InvalidAccessError' : 'SyntaxError');
    if (this.readyState === State.CLOSED) return;
    this.#hub.detach(this, code, reason);
    this.closed(code, reason);
  }

  /** Ends the socket and reports it as a real one would: asynchronously. */
  closed(code: number, reason: string): void {
    if (this.readyState === State.CLOSED) return;
    this.readyState = State.CLOSED;
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }
}

/** What the leader knows of one virtual socket. */
interface Peer {
  opened?: boolean;
  /** Its first `auth` went by: any later one is a renewal (`renewToken()`), for the server. */
  authed?: boolean;
  /** The tasks it subscribed to and has not let go of: unsubscribed, or refused by the server. */
  tasks: Set<string>;
}

/** One tab's end of the sharing, for one URL; the leader part is used while this tab leads. @internal */
class TabHub {
  /** Its id (`0.8125…`; no `/`, which ends it in a socket's id): as unique as base 36 of the same number. */
  readonly tab = '' + Math.random();
  declare readonly url: string;
  /**
   * Clients whose sockets use it, by the `closed` signal each gave `wrap` (`undefined` for those that gave
   * none: they never close); the tab leaves when the last one closes.
   */
  readonly users = new Set<AbortSignal | undefined>();
  /**
   * This tab's sockets given up on (4010) since a leader last spoke (see `wrap`), a count below 8 (from 2 on
   * the tab's new sockets are real); 8 (a bit a `close` keeps) once the leader sent the tab to sockets of
   * its own (`own`), until a new leader announces itself: its real socket may take the tab's credential.
   * Cleared by every close of the real socket, the tab tried it once more after each (an attempt refused
   * and a backoff step lost; a connect timeout for a tab without a token), to be sent off again.
   */
  silent = 0;
  /**
   * The latest socket of its own of each client (by its `closed` signal) since the tab's sockets became real
   * (`silent` 2 or more). Behind a frozen leader (below 8), closed at the first frame a leader relays (it runs
   * again): their clients resume from their cursors through it. Until 7 December 2026 they stayed open, and a
   * thawed leader posts no `leader` or `close` unless its real socket closes: the browser held the tab's
   * socket beside the shared one for as long as it lived (seen in Chromium). A tab sent off by the leader (8)
   * keeps its own until a new leader announces itself, as before; that leader's first frame closes them.
   */
  readonly own = new Map<AbortSignal | undefined, WebSocketLike>();
  /** Aborts the lock requests still waiting; held locks are let go by `#left` settling. */
  readonly #requests = new AbortController();
  /** Set by `#left`'s executor, which runs at once (no initial value: bytes of the /tabs budget). */
  #leave!: () => void;
  /** What every lock callback returns: the lock is held until the tab leaves. */
  readonly #left = new Promise<void>((resolve) => {
    this.#leave = resolve;
  });
  /** No initial value (`undefined` until the tab leaves): bytes of the /tabs budget, as `#leading`. */
  #gone?: boolean;
  readonly #WebSocket: WebSocketConstructorLike;
  readonly #env: HubEnv;
  readonly #channel: BroadcastChannelLike;
  readonly #sockets = new Map<string, VirtualSocket>();
  #next = 0;
  #leader: string | undefined;
  /** This tab's own lock is held: the leader can tell when the tab is gone. */
  readonly #alive: Promise<void>;
  // Leader part.
  #leading?: boolean;
  #real: WebSocketLike | undefined;
  /** The real socket's `hello`, handed to each socket that joins it, with the store's current epoch. */
  #hello: Frame | undefined;
  /** The socket whose `auth` the real socket sent last: the credential the server checks, or has in force. */
  #authBy: string | undefined;
  /**
   * The token of the `auth` whose credential is in force (the first, or a renewal the server answered with
   * its `hello`); `undefined` until the real socket sent one.
   */
  #token: unknown;
  /**
   * The tokens of the renewals sent and not answered yet, as the server holds them: the one it checks, then
   * the newest sent after it (it checks one at a time, and a renewal waiting is replaced by a newer one, never
   * answered). The next `hello` puts the first in force, a `timeout` drops it. One slot (the latest sent),
   * two renewals in flight had the first one's `hello` put the second's token in force, unchecked: a tab
   * bringing it was served on the first's credential.
   */
  #renewals!: unknown[];
  /**
   * The virtual sockets it serves: filled only while the tab leads (see `#onConnect`), emptied when it
   * stops (`leave`), so a tab that does not lead finds none of the ids a `send` or `bye` names.
   */
  readonly #peers = new Map<string, Peer>();
  /**
   * Per task, the highest ack seq forwarded, and the index of the last reset snapshot of it relayed: a
   * tab's ack sent before its client was handed that frame is of the log the reset replaced.
   */
  readonly #acked = new Map<string, [seq: number, reset: number]>();
  /** The index of the next frame relayed (see `VirtualSocket.seen`). */
  #frames = 0;
  readonly #watchedTabs = new Set<string>();

  constructor(url: string, WebSocket: WebSocketConstructorLike, env: HubEnv) {
    this.url = url;
    this.#WebSocket = WebSocket;
    this.#env = env;
    this.#channel = env.channel(`${env.prefix}${url}`);
    this.#channel.onmessage = (event) => this.#receive(event.data as Message | null);
    this.#alive = new Promise<void>((held) => {
      this.#lock(`tab:${this.tab}`, () => {
        held();
        return this.#left;
      });
    });
    // Held until the tab leaves or goes: then the browser hands the lock to another tab.
    this.#lock(`leader:${url}`, () => {
      if (!this.#gone) {
        this.#leading = true;
        this.post({ t: 'leader' });
      }
      return this.#left;
    });
  }

  /**
   * Requests a lock that a leaving tab stops waiting for. A request that fails otherwise was refused (a
   * sandboxed frame or an opaque origin rejects with a SecurityError): no sharing then, or the tab would
   * wait for ever. Its sockets close at once, and the client's next ones are real (see `wrap`).
   */
  #lock(name: string, callback: () => Promise<unknown>): void {
    this.#env.locks
      .request(`${this.#env.prefix}${name}`, { signal: this.#requests.signal }, callback)
      .catch((cause: unknown) => {
        if (this.#gone) return;
        this.#env.refused ??= new ProgressError(ErrorCode.Internal, 'tabSharing: Web Locks refused', {
          cause,
        });
        this.leave('tabSharing: Web Locks refused');
      });
  }

  /**
   * The tab leaves (its last client closed, the page stays): its sockets close, a leader closes the real
   * socket and sends the other tabs' sockets to the next leader, and the tab's locks and channel go.
   */
  leave(reason = 'client closed'): void {
    for (const socket of this.#sockets.values()) socket.close(1000, reason);
    if (this.#leading) {
      this.#leading = false;
      // The reason, for the server's logs: whether another tab that connected through it is still there.
      this.#closeReal(1000, this.#watchedTabs.size ? 'leader tab left' : 'no tab watching');
      // Its list names this tab's sockets too, already closed: no other tab has them.
      this.#failReal(Close.LEADER_GONE, 'leader tab left');
    }
    this.#gone = true;
    this.#requests.abort();
    this.#leave();
    this.#channel.close();
  }

  /** `suffix` ends its id: `-` says its client sends no `auth` (it has no token; see `#openPeer`). */
  attach(socket: VirtualSocket, suffix: string): string {
    const id = `${this.tab}/${this.#next++}${suffix}`;
    this.#sockets.set(id, socket);
    void this.#alive.then(() => socket.readyState === State.CONNECTING && this.post({ t: 'connect', id }));
    return id;
  }

  detach(socket: VirtualSocket, code: number, reason: string): void {
    this.#sockets.delete(socket.id);
    if (code === CLOSE_HEARTBEAT_TIMEOUT) this.silent++;
    this.post({ t: 'bye', id: socket.id, code, reason });
  }

  /** To every tab, this one included (a channel does not deliver to its sender), from this tab. */
  post(message: Unsent): void {
    (message as Message).from = this.tab;
    this.#channel.postMessage(message);
    queueMicrotask(() => this.#receive(message as Message));
  }

  /**
   * Another page on the channel (another version, a bug) may post anything: what would throw or mislead
   * is dropped here (an id that names no socket is dropped by its lookup).
   */
  #receive(message: Message | null) {
    if (this.#gone || typeof message?.from !== 'string') return;
    switch (message.t) {
      case 'leader':
        // A leader runs (see `silent`): it announced itself, or (a `close`) answered a socket given up.
        this.silent = 0;
        this.#onLeader(message.from);
        return;
      case 'connect':
        if (this.#leading && typeof message.id === 'string' && message.id.startsWith(`${message.from}/`))
          this.#onConnect(message.id, message.from);
        return;
      case 'send':
        if (typeof message.data === 'string') this.#onSend(message.id, message.data, message.seen);
        return;
      case 'bye': {
        // Only a socket of this leader's may give up on its real socket (a tab that does not lead has none).
        const peer = this.#peers.get(message.id);
        if (!peer) return;
        // A client that gave up on its socket (silent past the heartbeat timeout or a wake ping, or the
        // finish watchdog suspecting the replica) gave up on the real one: the virtual socket only relays.
        // Unless it never had the hello, for want of an `auth` (a tab without a token, or whose token
        // function did not answer), where the real socket sent one: its tab's sockets are its own then,
        // as another credential's are. Replaced, the real socket would be given up on again, for ever.
        const gaveUp = message.code === CLOSE_HEARTBEAT_TIMEOUT || message.reason === 'finish watchdog';
        if (gaveUp && this.#token !== undefined && !peer.authed) return this.#sendOff(message.id);
        this.#forget([message.id]);
        if (gaveUp) {
          this.#closeReal(CLOSE_HEARTBEAT_TIMEOUT, message.reason);
          this.#failReal(CLOSE_HEARTBEAT_TIMEOUT, message.reason);
        }
        return;
      }
      case 'open': {
        const socket = this.#sockets.get(message.id);
        // Only the leader this tab knows (or, before it knows one, any) opens a socket: a late `open`
        // from a former leader would tie the socket to a tab that no longer forwards its frames.
        if (socket?.readyState === State.CONNECTING && this.#fromLeader(message)) {
          socket.leader = this.#leader = message.from;
          socket.protocol = message.protocol;
          socket.readyState = State.OPEN;
          socket.onopen?.({});
        }
        return;
      }
      case 'own':
        // Its credential is not the one the real socket has in force: the tab's sockets are its own until
        // a new leader announces itself (see `silent`), and the server checks it. Left in `#sockets`,
        // closed, as every use of it skips (a leader change drops it). Only the tab whose socket it names:
        // taken by every tab, it sent the others (the leader's too) to sockets of their own as well.
        if (
          this.#fromLeader(message) &&
          typeof message.id === 'string' &&
          message.id.startsWith(`${this.tab}/`)
        ) {
          this.silent = 8;
          this.#sockets.get(message.id)?.closed(Close.LEADER_GONE, 'another credential');
        }
        return;
      case 'frame':
        // A leader runs (thawed, if it was frozen): the tab's sockets of its own go (see `own`), and a socket
        // given up on before this frame is not a second one in a row.
        // With 1000 and a reason, as the client's own closes: until 7 December 2026 without a code, so the server
        // (and any proxy) saw 1005, no status, a close that says nothing of why.
        if (this.silent < 8) {
          for (const socket of this.own.values()) socket.close(1000, 'leader tab up');
          this.own.clear();
        }
        this.silent &= 8;
        if (typeof message.data === 'string')
          for (const socket of this.#sockets.values()) {
            if (socket.readyState !== State.OPEN || socket.leader !== message.from) continue;
            // A hello only to a socket without one (a socket asked for again, a `connect` repeated on a leader
            // change, is opened, and sent the cached hello, again), any other frame to one with one; either
            // broadcast, or to one socket.
            if (!message.hello === !socket.helloed || (message.to ?? socket.id) !== socket.id) continue;
            socket.helloed ||= message.hello;
            // Each on its own, as a browser dispatches: a client that throws does not starve the others. Seen
            // once handed over, not when it arrives: what the client sends meanwhile followed the frames before.
            queueMicrotask(() => {
              socket.seen = message.i;
              socket.onmessage?.({ data: message.data });
            });
          }
        return;
      case 'close': {
        this.silent &= 8;
        if (typeof message.code !== 'number' || !Array.isArray(message.ids ?? [])) return;
        // Sockets still connecting through it have no leader yet: the leader names them. A former
        // leader's list is stale: those sockets connect through the new leader now.
        const named = (this.#fromLeader(message) && message.ids) || [];
        for (const socket of this.#sockets.values()) {
          if (socket.leader !== message.from && !named.includes(socket.id)) continue;
          this.#sockets.delete(socket.id);
          // A refusal of one tab's credential is that socket's; the others reconnect (see `#failReal`).
          socket.closed(
            (message.by ?? socket.id) === socket.id ? message.code : Close.LEADER_GONE,
            message.reason,
          );
        }
        return;
      }
      default:
        message satisfies never;
    }
  }

  #fromLeader(message: Message): boolean {
    return (this.#leader ?? message.from) === message.from;
  }

  /**
   * A new leader: sockets through the old one are cut (their clients resume through the new one). The
   * leader's tab is watched: a tab that is gone (it left, or its `leader` came late) is forgotten, and
   * the sockets still connecting ask again, so an `open` from the tab that leads is believed.
   */
  #onLeader(leader: string | undefined): void {
    if (leader === this.#leader) return;
    this.#leader = leader;
    if (leader !== undefined) this.#watchTab(leader);
    for (const socket of this.#sockets.values()) {
      if (socket.readyState === State.CONNECTING) {
        this.post({ t: 'connect', id: socket.id });
      } else {
        this.#sockets.delete(socket.id);
        socket.closed(Close.LEADER_GONE, 'leader tab changed');
      }
    }
  }

  // ---- Leader part -------------------------------------------------------------------------------

  /** `tab`: the one that posted the `connect`, which `id` starts with (see `#receive`). */
  #onConnect(id: string, tab: string): void {
    this.#peers.set(id, { tasks: new Set() });
    this.#watchTab(tab);
    if (this.#real?.readyState === State.OPEN) this.#openPeer(id);
    else if (!this.#real) this.#openReal();
  }

  /**
   * Opens a socket on the open real socket, and hands it the hello once it may have it: its credential is
   * the real socket's (its `auth` brought the token the real socket sent), or the real socket sent none
   * (the server authenticated it at the upgrade). Called again for the hello when either comes. A client
   * sends nothing before its hello: handed at `open`, a tab whose token function had not answered yet
   * subscribed on the credential in force, and was broadcast what that credential may see (another
   * principal's tasks), until its own `auth` came.
   */
  #openPeer(id: string): void {
    // Always one: each caller has just found it there.
    const peer = this.#peers.get(id) as Peer;
    if (!peer.opened) {
      peer.opened = true;
      // A real socket that has no `protocol` hands none on: the client takes an absent one as `''` (newest).
      this.post({ t: 'open', id, protocol: (this.#real as WebSocketLike).protocol as string });
    }
    if (this.#token !== undefined && !peer.authed) {
      // A socket that sends no `auth` (its id says so) behind one that sent a token is never handed the
      // hello: its tab's sockets are its own at once. (Before, it waited its connect timeout, 10 s by default.)
      if (/-$/.test(id)) this.#sendOff(id);
    } else if (this.#hello)
      this.post({ t: 'frame', data: JSON.stringify(this.#hello), hello: true, to: id, i: this.#frames++ });
  }

  /** The socket's credential is not the real socket's: it closes, and its tab's next ones are real. */
  #sendOff(id: string): void {
    this.#forget([id]);
    this.post({ t: 'own', id });
  }

  /** `seen`: see `VirtualSocket.seen`; a tab of a version that does not say counts as having seen all. */
  #onSend(id: string, data: string, seen = Infinity) {
    const peer = this.#peers.get(id);
    const real = this.#real;
    if (!peer?.opened || real?.readyState !== State.OPEN) return;
    const frame = parse(data);
    if (!frame) return;
    const taskId = typeof frame.taskId === 'string' ? frame.taskId : '';
    switch (frame.type) {
      case 'auth':
        // One authentication per real socket: the first tab's credential opens it for all that bring the
        // same token. A tab's later `auth` renews the credential (renewToken) and goes to the server.
        if (!peer.authed) {
          peer.authed = true;
          if (this.#token !== undefined) {
            if (frame.token === this.#token) return this.#openPeer(id);
            // Another token may be another principal's (another login in that tab): served through this
            // socket, its tab would watch what this credential may and not what its own may. Its socket
            // closes (sending nothing more), and its tab's next ones are real (see `own` in `#receive`).
            return this.#sendOff(id);
          }
        }
        this.#authBy = id;
        // A renewal's credential is not in force until the server accepts it: checked, it may be another
        // principal's (refused, 4001), or its check may not answer in time (`timeout`: the socket keeps its
        // credential). Taken at once, a tab bringing that token was served on the credential still in force.
        if (this.#hello) this.#renewals.splice(1, 1, frame.token);
        else this.#token = frame.token;
        break;
      case 'subscribe':
        peer.tasks.add(taskId);
        // The server restarts the task's subscription of the socket with nothing acknowledged: its terminal
        // frame is re-sent until acked again, and an ack dropped here as a repeat of another tab's would have
        // it re-sent until the last tab let go. The reset snapshot's index stays (see `#acked`).
        this.#acked.get(taskId)?.splice(0, 1, 0);
        // Its socket's id as the request id, which the server echoes in a refusal: the refusal then goes
        // to this socket alone (see `real.onmessage`).
        data = JSON.stringify({ ...frame, id });
        break;
      case 'unsubscribe':
        peer.tasks.delete(taskId);
        if (this.#wanted(taskId)) return;
        this.#acked.delete(taskId);
        break;
      case 'ack': {
        // Every tab acks the same events: the server needs to hear each seq once. An ack sent before its
        // tab saw the task's reset is of the old log: the server would refuse it (above the task's seq) or
        // take it for one of the new log, and recorded here it would drop the new log's acks as repeats,
        // the terminal one included (its tab unsubscribes before the refusal could come back).
        const seq = typeof frame.seq === 'number' ? frame.seq : 0;
        const [acked, reset] = this.#acked.get(taskId) ?? [0, 0];
        if (seq <= acked || seen < reset) return;
        this.#acked.set(taskId, [seq, reset]);
        break;
      }
    }
    try {
      real.send(data);
    } catch {
      // Closing: its close event tells every tab.
    }
  }

  #wanted(taskId: string): boolean {
    for (const peer of this.#peers.values()) if (peer.tasks.has(taskId)) return true;
    return false;
  }

  /** Virtual sockets gone (closed, or their tab died): drop what only they wanted. */
  #forget(ids: string[]): void {
    const tasks = new Set<string>();
    for (const id of ids) {
      for (const task of this.#peers.get(id)?.tasks ?? []) tasks.add(task);
      this.#peers.delete(id);
    }
    if (!this.#peers.size) {
      this.#closeReal(1000, 'no tab watching');
      return;
    }
    const real = this.#real;
    if (real?.readyState !== State.OPEN) return;
    for (const taskId of tasks) {
      if (this.#wanted(taskId)) continue;
      this.#acked.delete(taskId);
      real.send(JSON.stringify({ type: 'unsubscribe', taskId }));
    }
  }

  /**
   * A tab that dies cannot say bye; its lock, released by the browser, says it instead: to the leader,
   * of a tab it serves, and to every tab, of the leader it knows.
   */
  #watchTab(tab: string): void {
    if (tab === this.tab || this.#watchedTabs.has(tab)) return;
    this.#watchedTabs.add(tab);
    this.#lock(`tab:${tab}`, async () => {
      this.#watchedTabs.delete(tab);
      if (tab === this.#leader) this.#onLeader(undefined);
      this.#forget([...this.#peers.keys()].filter((id) => id.startsWith(`${tab}/`)));
    });
  }

  #openReal(): void {
    let real: WebSocketLike;
    try {
      real = new this.#WebSocket(this.url, [PROTOCOL_NAME, PROTOCOL_NAME_V1]);
    } catch {
      this.#failReal(1006, 'could not create a socket');
      return;
    }
    this.#real = real;
    this.#hello = this.#authBy = this.#token = undefined;
    this.#renewals = [];
    this.#acked.clear();
    // At the open, and again at the hello (see `#openPeer`).
    const openPeers = (): void => {
      for (const id of this.#peers.keys()) this.#openPeer(id);
    };
    real.onopen = openPeers;
    real.onmessage = (event: { data: unknown }) => {
      const data = String(event.data);
      // Parsed only when it may be an `error` frame (every one names its type: quoted, a word matches only
      // as a whole string), a hello (the first frame, from a server that works, and a renewal's answer), or
      // a reset snapshot (a `"reset"` key): not every event. (Until 7 December 2026 the error codes acted on
      // were listed instead, and the first frame parsed whatever it was: bytes of the /tabs budget; an event
      // whose text quotes one of these words is parsed for nothing, as it was.)
      const frame = /"(error|reset|hello)"/.test(data) ? parse(data) : undefined;
      if (frame?.type === 'hello') {
        // A later hello answers a renewal (relayed: a client already open ignores it).
        if (this.#hello) this.#token = this.#renewals.shift();
        else {
          this.#hello = frame;
          return openPeers();
        }
      }
      // After such an error the server follows the task no more, and every client it reaches drops it
      // without an unsubscribe, so their sockets let go of it here. Kept, it would grow a socket's set
      // for as long as the socket lives (a page trying many ids), and make the task look wanted after the
      // last unsubscribe of a later watch of it (once created, from another tab): the server would go
      // on sending it. A refusal naming a request answers one socket's subscribe and goes to that socket
      // alone: another tab's subscribe, sent after it was refused (the task created meanwhile), is
      // answered on its own. One naming none (a task found gone, a renewal's re-check) goes to all.
      let to: string | undefined;
      if (frame?.type === 'error') {
        const code = frame.code;
        // A renewal's check given up on (no task: a subscribe's names one): the socket keeps its credential.
        if (code === 'timeout' && !frame.taskId) this.#renewals.shift();
        const refused = code === 'task_not_found' || code === 'forbidden';
        // A refused subscribe was one tab's (the refusal echoes its id): a rate limit's too (the only one
        // naming a task), and the task's subscription, if the socket has one, goes on: only that tab
        // retries. Relayed to all, every tab watching the task would report it and subscribe again, N frames
        // more from a socket already over its budget. The refusal of the credential the latest `auth` sent
        // (a renewal's, or the socket's first) goes to that tab, as the close after it (see `#failReal`);
        // any other error to all. A `requestId` that is not a string matches no socket: the client would
        // have dropped such a frame. (A task id is never empty: `frame.taskId` alone tells whether there is one.)
        to =
          refused || (code === 'rate_limited' && frame.taskId)
            ? (frame.requestId as string | undefined)
            : this.#credential(code);
        if (refused) {
          this.#acked.delete(frame.taskId as string);
          for (const [id, peer] of this.#peers)
            if ((to ?? id) === id) peer.tasks.delete(frame.taskId as string);
        }
      }
      // A reset snapshot starts the task's log over (the store's epoch renewed on this socket, or a cursor
      // ahead of the task): every tab's acks start again from its seq, below the seqs forwarded before,
      // which would drop them as repeats, the terminal ack of the new log included. Its index (this frame's)
      // tells the acks of the new log from those a tab sent before it saw it. (Only snapshots have `reset`.)
      // Its epoch is the store's from now on: the hello handed to a tab that joins later says so, and a
      // cursor the tab saved in the old epoch starts over. The server cannot tell that cursor's seq from
      // one of the new epoch once it sent this socket the task in the new epoch: it would resume there.
      if (frame?.reset === true) {
        this.#acked.set(frame.task?.id as string, [0, this.#frames]);
        if (this.#hello && frame.epoch) this.#hello.epoch = frame.epoch;
      }
      this.post({ t: 'frame', data, to, i: this.#frames++ });
    };
    real.onclose = (event: { code: number; reason: string }) => {
      if (real === this.#real) this.#failReal(event.code, event.reason);
    };
    real.onerror = noop;
  }

  /**
   * The real socket is gone: so are the virtual ones; their clients reconnect (and reopen it). A close
   * refusing the credential refuses one tab's (the latest `auth` sent): that tab's client gets it, the
   * others a close they reconnect after, with their own credential. Passed to all, one tab's invalid or
   * expired token ended every tab's client for good (4001, or a second 4011 before a `hello`).
   */
  #failReal(code: number, reason: string): void {
    this.#real = undefined;
    this.post({ t: 'close', code, reason, ids: [...this.#peers.keys()], by: this.#credential(code) });
    this.#peers.clear();
  }

  /**
   * The socket whose credential a close or error `code` refuses (4001 unauthenticated, 4011 expired), else
   * `undefined`: one tab's credential, whose refusal only that tab's client may take for its own (a second
   * 4011 before a `hello`, or any 4001, ends a client for good).
   */
  #credential(code: unknown): string | undefined {
    // `test` reads its argument as a string, a close code's number too.
    return /^(4001|4011|unauthenticated|token_expired)$/.test(code as string) ? this.#authBy : undefined;
  }

  #closeReal(code: number, reason: string): void {
    const real = this.#real;
    this.#real = undefined;
    if (!real) return;
    // Its close event, later, finds it no longer the real socket; a frame would still be relayed.
    real.onmessage = null;
    try {
      real.close(code, reason);
    } catch {
      // A reason it refuses (another tab's, past 123 bytes): the code alone, always valid, still closes it.
      real.close(code);
    }
  }
}

/** A frame's fields the leader reads. */
interface Frame {
  type?: unknown;
  taskId?: unknown;
  seq?: unknown;
  code?: unknown;
  token?: unknown;
  requestId?: unknown;
  reset?: unknown;
  epoch?: unknown;
  task?: { id?: unknown } | null;
}

/** The frame `data` holds; `undefined` for what is not JSON (JSON's `null` and scalars come as they are). */
function parse(data: string): Frame | null | undefined {
  try {
    return JSON.parse(data);
  } catch {
    return undefined;
  }
}
