import { ProgressClient } from '../../src/index.js';
import { sseFallback } from '../../src/sse.js';
import { tabSharing } from '../../src/tab-sharing.js';

/**
 * The page of the Chromium tests: watches the task named in the query and records, with wall-clock
 * times, what a test measures: page-life events, the seqs it was shown, the end.
 *
 *   ?task=ID          the task to watch
 *   &share            one socket for all tabs (tabSharing)
 *   &nopagelife       no page-life checks (the baseline: heartbeat timeouts and backoff only)
 *   &sse              follow the task over Server-Sent Events only (sseFallback, preferFallback)
 *   &api=URL          the server's WebSocket URL, when it is on another origin than the page
 */

interface PageLog {
  wakes: { type: string; at: number }[];
  seqs: { seq: number; at: number }[];
  items: number[];
  states: { state: string; reason: string; at: number }[];
  finished: { status: string; seq: number; at: number } | null;
  errors: string[];
  /** When each SSE stream was asked for (with `&sse`). */
  streams: number[];
}

const params = new URLSearchParams(location.search);
const log: PageLog = {
  wakes: [],
  seqs: [],
  items: [],
  states: [],
  finished: null,
  errors: [],
  streams: [],
};

for (const type of ['resume', 'visibilitychange', 'freeze'])
  document.addEventListener(type, () => log.wakes.push({ type, at: Date.now() }));
for (const type of ['online', 'offline', 'pageshow'])
  window.addEventListener(type, () => log.wakes.push({ type, at: Date.now() }));

const client = new ProgressClient({
  url: params.get('api') ?? '/progress',
  shareAcrossTabs: params.has('share') ? tabSharing() : false,
  ...(params.has('nopagelife') ? { pageEvents: false as const } : {}),
  ...(params.has('sse')
    ? {
        preferFallback: true,
        fallbackTransport: sseFallback({
          fetch: (url, init) => {
            if (init.method === 'GET') log.streams.push(Date.now());
            return fetch(url, init);
          },
        }),
      }
    : {}),
  wakePingTimeoutMs: 1000,
  // Chromium fires no `resume` for a visible page thawed over CDP: the clock check is what notices.
  clockCheckIntervalMs: 500,
  clockJumpMs: 1000,
  reconnect: { maxDelayMs: 8000 },
});
// The test reads the log, and may close the client while the page stays open.
(globalThis as { finishline?: unknown }).finishline = { log, client };
client.on('state', (change) =>
  log.states.push({ state: change.state, reason: change.reason, at: Date.now() }),
);
client.on('error', (error) => log.errors.push(`${error.code}: ${error.message}`));
const watch = client.watch(params.get('task') ?? '');
watch.subscribe(() => log.seqs.push({ seq: watch.getSnapshot().seq, at: Date.now() }));
watch.on('item', (event) => log.items.push(event.seq));
watch.on('finished', (state) => {
  log.finished = { status: state.status, seq: state.seq, at: Date.now() };
});
