// Fails when a package's sources import each other in a loop (relative imports inside packages/*/src):
// a loop makes module evaluation order matter and usually means two files share one role. Loops made of
// type-only imports (erased at runtime) are listed as warnings. Usage: node scripts/check-import-cycles.mjs
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const IMPORT = /^(?:import|export)\s+(type\s+)?[^;]*?from\s+'(\.[^']+)'/gms;

function sourcesOf(dir) {
  const files = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) files.push(...sourcesOf(path));
    else if (path.endsWith('.ts') && !path.endsWith('.d.ts')) files.push(resolve(path));
  }
  return files;
}

/** Strongly connected components of more than one file (Tarjan): each holds at least one loop. */
function loops(graph) {
  let next = 0;
  const index = new Map();
  const low = new Map();
  const stack = [];
  const onStack = new Set();
  const found = [];
  const visit = (file) => {
    index.set(file, next);
    low.set(file, next);
    next++;
    stack.push(file);
    onStack.add(file);
    for (const target of graph.get(file)) {
      if (!index.has(target)) {
        visit(target);
        low.set(file, Math.min(low.get(file), low.get(target)));
      } else if (onStack.has(target)) low.set(file, Math.min(low.get(file), index.get(target)));
    }
    if (low.get(file) !== index.get(file)) return;
    const component = [];
    let member;
    do {
      member = stack.pop();
      onStack.delete(member);
      component.push(member);
    } while (member !== file);
    if (component.length > 1) found.push(component);
  };
  for (const file of graph.keys()) if (!index.has(file)) visit(file);
  return found;
}

let failed = false;
for (const pkg of readdirSync(join(root, 'packages'))) {
  const src = join(root, 'packages', pkg, 'src');
  if (!statSync(join(root, 'packages', pkg)).isDirectory()) continue;
  const files = sourcesOf(src);
  const known = new Set(files);
  const all = new Map();
  const runtime = new Map();
  for (const file of files) {
    all.set(file, new Set());
    runtime.set(file, new Set());
    for (const [, typeOnly, specifier] of readFileSync(file, 'utf8').matchAll(IMPORT)) {
      const target = resolve(dirname(file), specifier.replace(/\.js$/, '.ts'));
      if (!known.has(target)) continue;
      all.get(file).add(target);
      if (!typeOnly) runtime.get(file).add(target);
    }
  }
  const name = (file) => relative(root, file);
  for (const component of loops(runtime)) {
    failed = true;
    console.error(`import loop in ${pkg}: ${component.map(name).join(' <-> ')}`);
  }
  const runtimeLoops = new Set(loops(runtime).flat());
  for (const component of loops(all)) {
    if (component.every((file) => runtimeLoops.has(file))) continue;
    console.warn(`type-only import loop in ${pkg}: ${component.map(name).join(' <-> ')}`);
  }
}
if (failed) process.exit(1);
console.log('no import loops');
