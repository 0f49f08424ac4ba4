// Type-checks every ```ts and ```tsx block of the READMEs and docs/, so a snippet that no longer matches the API
// fails CI instead of misleading a reader. Each block becomes a module in .tmp/doc-snippets/ and is
// compiled against the packages' sources (tsconfig.base.json paths). A block that needs context it does
// not show declares it (`declare const store: ProgressStore;`), which is also what a reader needs to see.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { docSources } from './doc-sources.mjs';

const root = new URL('..', import.meta.url).pathname;
const out = join(root, '.tmp/doc-snippets');
const sources = docSources(root);

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const files = [];
for (const source of sources) {
  let text;
  try {
    text = readFileSync(join(root, source), 'utf8');
  } catch {
    continue;
  }
  let index = 0;
  for (const match of text.matchAll(/^```(tsx?)\n([\s\S]*?)^```/gm)) {
    index += 1;
    const line = text.slice(0, match.index).split('\n').length;
    const name = `${source.replaceAll(/[^A-Za-z0-9]+/g, '-')}-${index}.${match[1]}`;
    writeFileSync(join(out, name), `// ${source}:${line}\n${match[2]}\nexport {};\n`);
    files.push(name);
  }
}
writeFileSync(
  join(out, 'tsconfig.json'),
  JSON.stringify({
    extends: relative(out, join(root, 'tsconfig.base.json')),
    compilerOptions: { lib: ['ES2022', 'DOM'], types: ['node'], noUnusedLocals: false, jsx: 'react-jsx' },
    include: ['*.ts', '*.tsx'],
  }),
);
try {
  execFileSync(join(root, 'node_modules/.bin/tsc'), ['--noEmit', '-p', join(out, 'tsconfig.json')], {
    stdio: 'inherit',
  });
} catch {
  console.error(`doc snippets: type errors (sources named on the first line of each .tmp/doc-snippets file)`);
  process.exit(1);
}
console.log(`doc snippets: ${files.length} blocks from ${sources.length} files compile`);
