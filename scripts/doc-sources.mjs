// The Markdown files the doc checks read: the READMEs and docs/*.md (check-doc-snippets.mjs compiles their
// code blocks, check-doc-references.mjs resolves the tests they cite).
import { readdirSync } from 'node:fs';
import { join } from 'node:path';

/** Paths relative to `root`, the repository's root. */
export function docSources(root) {
  return [
    'README.md',
    ...readdirSync(join(root, 'packages')).map((dir) => `packages/${dir}/README.md`),
    'examples/kube-node-mgr/README.md',
    ...readdirSync(join(root, 'docs'))
      .filter((name) => name.endsWith('.md'))
      .map((name) => `docs/${name}`),
  ];
}
