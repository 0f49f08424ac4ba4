// What the core browser entry would weigh without one part or another: a diagnostic for issue 14 item 8
// (8 KB asked), to tell what reaching the budget would take. Each row bundles the entry as
// bundle-size.mjs does (browser-bundle.mjs) with some source files
// patched in memory: nothing on disk changes, and a patch that no longer matches its source stops the
// script, so a row never silently measures the unpatched code.
//
//   node packages/progress-client/scripts/size-ablation.mjs
//
// The rows remove behaviour (option checks, the frame check, page life, rate and ETA) or swap a
// dependency the project chose (eventemitter3): they measure a cost, none of them is a proposal.

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { bundleForBrowser } from './browser-bundle.mjs';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const src = (path) => here(`../src/${path}`);

/** Replaces `pattern` in the text; throws when it does not match (the source moved on). */
const swap = (pattern, replacement) => (text, file) => {
  if (!pattern.test(text)) throw new Error(`size-ablation: ${pattern} no longer matches ${file}`);
  return text.replace(pattern, replacement);
};

// The options every ProgressClient gets when it passes none, written out as a plain object.
const PLAIN_DEFAULTS = `{ headers: {}, httpCredentials: 'include', persistence: false, connectTimeoutMs: 10000,
  heartbeatTimeoutMs: null, heartbeatMarginMs: 2000, behindGraceMs: 1000, finishTimeoutMs: 3000, ackDelayMs: 1000,
  ackEvery: 32, reconnect: { initialDelayMs: 500, maxDelayMs: 30000, factor: 2, jitter: 0.5 },
  stableConnectionMs: 1000, httpFallbackAfterAttempts: 3, errorAfterAttempts: 3, preferFallback: false,
  httpPollIntervalMs: 2000, rateWindowMs: 10000, shareAcrossTabs: false, wakePingTimeoutMs: 2000,
  clockCheckIntervalMs: 2000, clockJumpMs: 5000, timers: systemTimers, clock: systemClock, random: Math.random } as any`;

const TINY_EMITTER = `export class EventEmitter {
  #l = new Map();
  on(e, f) { let s = this.#l.get(e); if (!s) this.#l.set(e, (s = new Set())); s.add(f); return this; }
  off(e, f) { this.#l.get(e)?.delete(f); return this; }
  once(e, f) { const g = (...a) => { this.off(e, g); f(...a); }; return this.on(e, g); }
  emit(e, ...a) { const s = this.#l.get(e); if (!s) return false; for (const f of [...s]) f(...a); return true; }
  removeAllListeners(e) { e === undefined ? this.#l.clear() : this.#l.delete(e); return this; }
  listenerCount(e) { return this.#l.get(e)?.size ?? 0; }
}`;

/** Row name → { file (from src/) → patch }, or the special `emitter` flag. */
const ROWS = {
  'as shipped': {},
  'no option checks (defaults spread)': {
    'options.ts': [
      swap(
        /const CLIENT_OPTIONS = \{[\s\S]*?\} satisfies[^;]*;/,
        `const CLIENT_OPTIONS = ${PLAIN_DEFAULTS};`,
      ),
      swap(/type Described = ResolvedOptionsOf<typeof CLIENT_OPTIONS>;/, 'type Described = any;'),
      swap(/Object\.freeze\(defaultsOf\(CLIENT_OPTIONS\)\)/, 'Object.freeze(CLIENT_OPTIONS)'),
      swap(
        /const o = resolveOptions_\('ProgressClient', CLIENT_OPTIONS, options\);/,
        'const o: any = { ...CLIENT_OPTIONS, ...options, reconnect: { ...CLIENT_OPTIONS.reconnect, ...(options as any).reconnect } };',
      ),
    ],
  },
  'no check of server frames (JSON.parse only)': {
    'frame-check.ts': [
      swap(
        /export function checkServerFrame\(([^)]*)\)[^{]*\{/,
        'export function checkServerFrame($1): any { return { ok: true, frame: value as any };',
      ),
    ],
  },
  'no page life (visibility, online, bfcache, clock jumps)': {
    'progress-client.ts': [swap(/new PageLife\(/, '(undefined as any)(')],
    'options.ts': [swap(/\(pageEvents \?\? defaultPageEventSources\(\)\)/, 'pageEvents')],
  },
  'no rate and ETA': {
    'watched-task.ts': [
      swap(
        /new RateEstimator\(options\.rateWindowMs\)/,
        '({ add() {}, rate() { return null; }, eta() { return null; } } as any)',
      ),
    ],
  },
  'a 10-line emitter instead of eventemitter3': { emitter: true },
};
{
  // Patches of the same file from several rows apply one after the other.
  const merged = {};
  for (const row of Object.values(ROWS))
    for (const [file, patches] of Object.entries(row))
      if (file !== 'emitter') merged[file] = [...(merged[file] ?? []), ...patches];
  ROWS['all of the above'] = { ...merged, emitter: true };
}

/** The core entry with `row`'s patches applied as esbuild loads the files. */
function measure(row) {
  const patchedFiles = new Map(
    Object.entries(row)
      .filter(([file]) => file !== 'emitter')
      .map(([file, patches]) => [src(file), patches]),
  );
  const ablation = {
    name: 'ablation',
    setup(b) {
      if (row.emitter === true)
        b.onResolve({ filter: /^eventemitter3$/ }, () => ({ path: 'tiny-emitter', namespace: 'ablation' }));
      b.onLoad({ filter: /.*/, namespace: 'ablation' }, () => ({ contents: TINY_EMITTER, loader: 'js' }));
      b.onLoad({ filter: /\.ts$/ }, (args) => {
        const patches = patchedFiles.get(args.path);
        if (patches === undefined) return undefined;
        const text = patches.reduce((t, patch) => patch(t, args.path), readFileSync(args.path, 'utf8'));
        return { contents: text, loader: 'ts' };
      });
    },
  };
  return bundleForBrowser(['index.ts'], { plugins: [ablation] });
}

const shipped = await measure(ROWS['as shipped']);
for (const [name, row] of Object.entries(ROWS)) {
  const { minified, gzipped } = name === 'as shipped' ? shipped : await measure(row);
  const saved = shipped.gzipped - gzipped;
  process.stdout.write(
    `${name.padEnd(56)} ${String(gzipped).padStart(6)} B min+gzip ${String(minified).padStart(6)} B min` +
      `${saved === 0 ? '' : `   (-${saved} B)`}\n`,
  );
}
