import type { ProgressError } from '@finishline/core';
import type { StateChange } from '../connection-state.js';
import { httpFallback } from '../http-fallback.js';
import type { FetchLike, ProgressClientOptions } from '../options.js';
import { ProgressClient } from '../progress-client.js';
import type { Watch } from '../watch.js';
import { FakeServer, type FakeTask } from './fake-server.js';
import { ManualScheduler } from './manual-scheduler.js';

/**
 * Test support: a client wired to a fake server and a manual scheduler, its events recorded.
 *
 * @module
 */

/**
 * Wiring shared by the client's unit tests: a client on a {@link FakeServer} and a
 * {@link ManualScheduler}, with its state changes and errors recorded.
 *
 * @internal Test support.
 */
export function setup(overrides: Partial<ProgressClientOptions> = {}) {
  const scheduler = new ManualScheduler();
  const server = new FakeServer();
  const http = new FakeHttp();
  const client = new ProgressClient({
    url: 'ws://example.test/progress',
    WebSocket: server.WebSocket,
    fetch: http.fetch,
    httpFallback: httpFallback(),
    timers: scheduler,
    clock: scheduler.now,
    random: () => 0.5,
    ...overrides,
  });
  const states: StateChange[] = [];
  const errors: ProgressError[] = [];
  client.on('state', (change) => states.push(change));
  client.on('error', (error) => errors.push(error));
  return { scheduler, server, http, client, states, errors };
}

/** Records what a watch emits as short strings: `snapshot@3`, `item@4`, `completed@7`, `finished@7`. */
export function record(watch: Watch): string[] {
  const log: string[] = [];
  watch.on('snapshot', (state) => log.push(`snapshot@${state.seq}`));
  watch.on('progress', (event) => log.push(`progress@${event.seq}`));
  watch.on('item', (event) => log.push(`item@${event.seq}`));
  for (const type of ['completed', 'failed', 'cancelled', 'interrupted'] as const) {
    watch.on(type, (event: { seq: number }, _state: unknown) => log.push(`${type}@${event.seq}`));
  }
  watch.on('finished', (state) => log.push(`finished@${state.seq}`));
  watch.on('error', (error) => log.push(`error:${error.code}`));
  return log;
}

/**
 * The server's HTTP API over {@link FakeTask}s, as a `fetch`. Records the URLs asked for; `failWith`
 * makes every request fail with that status (0 = a network error).
 */
export class FakeHttp {
  readonly tasks = new Map<string, FakeTask>();
  readonly requests: { url: string; headers: Record<string, string>; credentials: string }[] = [];
  failWith: number | undefined;
  /** Largest page of events returned. */
  pageSize = 1000;
  /** The store's epoch, sent with every answer when set (as `@finishline/server` does). */
  epoch: string | undefined;

  /** The acks posted (`POST …/tasks/:id/ack`), answered 204 unless `failWith` says otherwise. */
  readonly acks: { taskId: string; seq: number }[] = [];

  readonly fetch: FetchLike = async (url, init) => {
    this.requests.push({ url, headers: init.headers, credentials: init.credentials });
    if (this.failWith === 0) throw new TypeError('fetch failed');
    const reply = (status: number, body: unknown) => ({
      ok: status >= 200 && status < 300,
      status,
      text: async () => JSON.stringify(body),
    });
    const ack = /\/tasks\/([^/]+)\/ack$/.exec(new URL(url).pathname);
    if (init.method === 'POST' && ack !== null && this.failWith === undefined) {
      this.acks.push({ taskId: decodeURIComponent(ack[1] ?? ''), seq: JSON.parse(init.body ?? '{}').seq });
      return reply(204, {});
    }
    if (this.failWith !== undefined) {
      const code = ({ 401: 'unauthenticated', 503: 'store_unavailable' } as Record<number, string>)[
        this.failWith
      ];
      return reply(this.failWith, { error: { code: code ?? 'internal', message: 'refused' } });
    }
    const parsed = new URL(url);
    const match = /\/tasks\/([^/]+)(\/events)?$/.exec(parsed.pathname);
    const task = match === null ? undefined : this.tasks.get(decodeURIComponent(match[1] ?? ''));
    if (task === undefined) return reply(404, { error: { code: 'task_not_found', message: 'no such task' } });
    const epoch = this.epoch === undefined ? {} : { epoch: this.epoch };
    if (match?.[2] === undefined) return reply(200, { task: task.view(), ...epoch });
    const afterSeq = Number(parsed.searchParams.get('afterSeq') ?? '0');
    const events = task.events.slice(afterSeq, afterSeq + this.pageSize);
    return reply(200, { task: task.view(), events, hasMore: afterSeq + events.length < task.seq, ...epoch });
  };

  /** Requests whose path ends with `suffix` (before the query). */
  count(suffix: string): number {
    return this.requests.filter((request) => new URL(request.url).pathname.endsWith(suffix)).length;
  }
}
