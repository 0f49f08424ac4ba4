// Checks the tests the docs name as proof (guarantees.md, security.md: `file.test.ts` › "test name", …):
// every named test file exists, and every quoted name after › is a test of that file. A renamed or moved
// test otherwise leaves a guarantee citing a test nobody can find. Names may be cut short with "…", and
// "describe › it" or "describe it" as vitest prints them; a glob (`*-guarantee.test.ts`) is not checked.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { docSources } from './doc-sources.mjs';

const root = new URL('..', import.meta.url).pathname;
const testFiles = execFileSync('git', ['ls-files', '*.test.ts', '*.test.tsx', '*.test.mjs'], {
  cwd: root,
  encoding: 'utf8',
})
  .split('\n')
  .filter(Boolean);
const sources = docSources(root);

/** The test files a doc's reference may mean: its path's end matches (`hub/task-stream.test.ts`). */
const filesFor = (reference) => testFiles.filter((file) => `/${file}`.endsWith(`/${reference}`));
/** A test's words as the doc quotes them: straight quotes and apostrophes, no cut mark. */
const plain = (text) => text.replaceAll(/[‘’]/g, "'").replace(/…$/, '').trim();

const problems = [];
let names = 0;
for (const source of sources) {
  let text;
  try {
    text = readFileSync(join(root, source), 'utf8');
  } catch {
    continue;
  }
  text.split('\n').forEach((line, index) => {
    const where = `${source}:${index + 1}`;
    for (const match of line.matchAll(
      /(?<![*\w./-])([\w./-]+\.test\.(?:ts|tsx|mjs))`?((?:\s*›\s*"[^"]+"(?:,\s*"[^"]+")*)?)/g,
    )) {
      const files = filesFor(match[1].replace(/^(\.\.\/)+/, ''));
      if (files.length === 0) {
        problems.push(`${where}: no test file ${match[1]}`);
        continue;
      }
      const code = plain(files.map((file) => readFileSync(join(root, file), 'utf8')).join('\n'));
      for (const quoted of match[2].matchAll(/"([^"]+)"/g)) {
        names += 1;
        // The last part is the test's own name; a describe block's name may come before it.
        const parts = plain(quoted[1]).split(' › ');
        const name = parts.at(-1);
        const found =
          code.includes(name) ||
          (parts.length === 1 &&
            name.split(' ').some((_, i, words) => {
              const head = words.slice(0, i).join(' ');
              return i > 0 && code.includes(`'${head}'`) && code.includes(words.slice(i).join(' '));
            }));
        if (!found) problems.push(`${where}: ${match[1]} has no test "${quoted[1]}"`);
      }
    }
  });
}
if (problems.length > 0) {
  console.error(
    `doc references: ${problems.length} tests named in the docs do not exist\n${problems.join('\n')}`,
  );
  process.exit(1);
}
console.log(`doc references: ${names} test names in ${sources.length} files exist`);
