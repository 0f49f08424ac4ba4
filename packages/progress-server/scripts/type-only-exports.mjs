// tsup's declaration bundler (rollup-plugin-dts) writes the source's `export type { SomeClass }` as a plain
// `export { SomeClass }` (Swatinem/rollup-plugin-dts#311). TypeScript then accepts `new SomeClass()` and
// `x instanceof SomeClass` against an export the code does not have: a SyntaxError at `import`, undefined
// at `require`. Run after tsup, in the package's folder, with each entry's path without extension: every
// name of the entry's declaration export lists that its code does not export is marked `type`, in the
// `.d.ts` (against the `.js`) and the `.d.cts` (against the `.cjs`).
//
//   node scripts/type-only-exports.mjs dist/index
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const require = createRequire(import.meta.url);
const EXPORT_LIST = /^export \{([^}]*)\}((?: from '[^']+')?;)$/gm;

for (const entry of process.argv.slice(2)) {
  const base = resolve(entry);
  for (const [declarations, names] of [
    [`${base}.d.ts`, Object.keys(await import(pathToFileURL(`${base}.js`).href))],
    [`${base}.d.cts`, Object.keys(require(`${base}.cjs`))],
  ]) {
    const text = readFileSync(declarations, 'utf8');
    const marked = text.replace(EXPORT_LIST, (_, list, tail) => {
      const specifiers = list.split(',').map((specifier) => {
        const trimmed = specifier.trim();
        const exported = trimmed.split(' ').at(-1);
        return trimmed.startsWith('type ') || names.includes(exported) ? trimmed : `type ${trimmed}`;
      });
      return `export { ${specifiers.join(', ')} }${tail}`;
    });
    if (marked !== text) writeFileSync(declarations, marked);
  }
}
