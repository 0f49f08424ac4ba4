// Checks the server's Prometheus metrics against the docs, both ways. Every metric metrics.ts registers is
// named in docs/operations.md (where operators look for what to alert on) and in the server's README, and
// every value the server gives one of its labels (`reason`, `limit`, `via`) is named after the metric, in
// its paragraph or table row, in one of the two. Every metric the docs name (`finishline_…`, `…_total`,
// `…_seconds`), and every label and value they pair with it (`resyncs_total{reason="gap"}`), exists in the
// code. A metric added without docs, or renamed under a PromQL expression of the docs, otherwise goes
// unnoticed: `principal_limits_total` was missing from operations.md's alert table. Labels whose values
// are error codes or frame types (`code`, `type`) are documented as such and not checked value by value.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { docSources } from './doc-sources.mjs';

const root = new URL('..', import.meta.url).pathname;
const read = (path) => readFileSync(join(root, path), 'utf8');
const serverSource = 'packages/progress-server/src';

/** The server's non-test sources, recursively. */
function sources(dir) {
  return readdirSync(join(root, dir), { withFileTypes: true }).flatMap((entry) => {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory()) return entry.name === 'testing' ? [] : sources(path);
    return entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts') ? [path] : [];
  });
}
const code = sources(serverSource).map((path) => read(path));
const metricsSource = read(`${serverSource}/metrics.ts`);

// ── the code's metrics: name, label, and the values the server gives the label ───────────────────────
/** @type {Map<string, { field: string, label?: string, values: Set<string> }>} */
const metrics = new Map();
for (const match of metricsSource.matchAll(/this\.(\w+) = (?:gauge|counter)\(\s*'(\w+)'/g)) {
  metrics.set(match[2], { field: match[1], values: new Set() });
}
for (const match of metricsSource.matchAll(
  /this\.(\w+) = track\(\s*new \w+\(\{\s*name: `\$\{p\}(\w+)`,([^}]*)\}/g,
)) {
  const label = match[3].match(/labelNames: \['(\w+)'\]/)?.[1];
  metrics.set(match[2], { field: match[1], label, values: new Set() });
}
if (metrics.size === 0) throw new Error(`no metrics found in ${serverSource}/metrics.ts`);

/** The members of a string union type of the server (`export type ResyncReason = 'a' | 'b'`). */
function union(name) {
  for (const text of code) {
    const found = text.match(new RegExp(`export type ${name} =([^;]+);`));
    if (found) return [...found[1].matchAll(/'(\w+)'/g)].map((member) => member[1]);
  }
  throw new Error(`no type ${name} in ${serverSource}`);
}
// Labels set from a variable of one of these types.
const typedLabels = {
  resyncs: 'ResyncReason',
  sseStreamsClosed: 'SseStreamEndReason',
  authRateLimited: 'AuthAttemptVia',
};
// Labels whose values are error codes or frame types, documented as such.
const openLabels = new Set(['code', 'type']);
const byField = new Map([...metrics.values()].map((metric) => [metric.field, metric]));
for (const [field, type] of Object.entries(typedLabels)) {
  for (const value of union(type)) byField.get(field)?.values.add(value);
}
for (const text of code) {
  for (const call of text.matchAll(/metrics\.(\w+)\.inc\(\{([^}]*)\}\)/g)) {
    const metric = byField.get(call[1]);
    if (metric === undefined || openLabels.has(metric.label)) continue;
    // Literal values, not those a value is compared with (`cap === 'address' ? 'pending_cap' : …`).
    for (const literal of call[2].matchAll(/(?<![=!]==\s*)'(\w+)'/g)) metric.values.add(literal[1]);
  }
}

for (const [name, metric] of metrics) {
  // A label set from a variable of a type not listed above: its values would go unchecked.
  if (metric.label !== undefined && !openLabels.has(metric.label) && metric.values.size === 0) {
    throw new Error(`no values found for ${name}{${metric.label}}: name its type in typedLabels`);
  }
}

// ── the docs ─────────────────────────────────────────────────────────────────────────────────────────
const operations = 'docs/operations.md';
const readme = 'packages/progress-server/README.md';
const problems = [];
/** Whether `text` names metric `name` (with the default prefix, or alone in code quotes). */
const names = (text, name) =>
  new RegExp(`finishline_${name}(?:_bucket|_sum|_count)?\\b|\`${name}(?:\\{[^}\`]*\\})?\``).test(text) ||
  new RegExp(`\`${name}\\{`).test(text);
/** The paragraphs (or table rows) of a Markdown text. */
const paragraphs = (text) => text.split(/\n\s*\n|\n(?=\|)/);

const documented = { [operations]: read(operations), [readme]: read(readme) };
for (const [name, metric] of metrics) {
  for (const [source, text] of Object.entries(documented)) {
    if (!names(text, name)) problems.push(`${source}: metric ${name} (metrics.ts) is not named`);
  }
  for (const value of metric.values) {
    // After the metric's name, in its paragraph or table row: a list of metrics names one after another.
    const named = Object.values(documented).some((text) =>
      paragraphs(text).some((paragraph) => {
        const at = paragraph.search(new RegExp(`(?:finishline_|\`)${name}\\b`));
        return at >= 0 && new RegExp(`[\`"]${value}[\`"]`).test(paragraph.slice(at, at + 1000));
      }),
    );
    if (!named) {
      problems.push(
        `${operations} / ${readme}: ${name}{${metric.label}="${value}"} (the server sets it) is named next to the metric in neither`,
      );
    }
  }
}

// Store tables and views share the prefix (`finishline_events`): a name the adapters' sources use is theirs.
const storeNames = ['packages/adapters-postgres/src', 'packages/adapters-sqlite/src'].flatMap((dir) =>
  readdirSync(join(root, dir), { recursive: true })
    .filter((file) => String(file).endsWith('.ts'))
    .map((file) => read(`${dir}/${file}`)),
);
const histogramSeries = /_(?:bucket|sum|count)$/;
for (const source of docSources(root)) {
  let text;
  try {
    text = read(source);
  } catch {
    continue;
  }
  text.split('\n').forEach((line, index) => {
    const where = `${source}:${index + 1}`;
    const mentioned = new Set();
    for (const match of line.matchAll(/\bfinishline_(\w+)/g)) {
      const name = match[1];
      if (!metrics.has(name.replace(histogramSeries, ''))) mentioned.add(name);
    }
    for (const match of line.matchAll(/(?<![\w.-])(\w+_(?:total|seconds(?:_bucket|_sum|_count)?))\b/g)) {
      const name = match[1].replace(/^finishline_/, '');
      if (!metrics.has(name.replace(histogramSeries, ''))) mentioned.add(name);
    }
    for (const name of mentioned) {
      if (!storeNames.some((store) => store.includes(`finishline_${name}`))) {
        problems.push(`${where}: ${name} is not a metric of metrics.ts`);
      }
    }
    // `name{label}`, `name{label="v"}`, `name{label=~"a\|b"}`, `name{label="a"|"b"}`.
    for (const match of line.matchAll(/(?:finishline_)?(\w+)\{(\w+)(?:=~?((?:"[^"]*"\|?)+))?\}/g)) {
      const [, name, label, quoted] = match;
      const metric = metrics.get(name);
      if (metric === undefined) continue;
      if (metric.label !== label) {
        problems.push(
          `${where}: ${name} has ${metric.label ? `label ${metric.label}` : 'no label'}, not ${label}`,
        );
        continue;
      }
      if (quoted === undefined || openLabels.has(label)) continue;
      for (const value of quoted.replaceAll('"', '').split(/\\?\|/)) {
        if (value !== '' && !metric.values.has(value)) {
          problems.push(`${where}: the server never sets ${name}{${label}="${value}"}`);
        }
      }
    }
  });
}

if (problems.length > 0) {
  console.error(
    `doc metrics: ${problems.length} mismatches between metrics.ts and the docs\n${problems.join('\n')}`,
  );
  process.exit(1);
}
const values = [...metrics.values()].reduce((sum, metric) => sum + metric.values.size, 0);
console.log(
  `doc metrics: ${metrics.size} metrics and ${values} label values named in the docs, and only those`,
);
