import { fileURLToPath } from 'node:url';

const src = (path: string) => fileURLToPath(new URL(`./packages/${path}`, import.meta.url));

/**
 * Maps the @finishline/* package names to their sources, so tests run against `src` without a build.
 * Longer names first: `@finishline/core/testing` must win over `@finishline/core`.
 */
export const workspaceAliases = [
  { find: /^@finishline\/core\/testing$/, replacement: src('progress-core/src/testing/index.ts') },
  { find: /^@finishline\/core\/internal$/, replacement: src('progress-core/src/internal.ts') },
  { find: /^@finishline\/core$/, replacement: src('progress-core/src/index.ts') },
  { find: /^@finishline\/sqlite$/, replacement: src('adapters-sqlite/src/index.ts') },
  { find: /^@finishline\/postgres$/, replacement: src('adapters-postgres/src/index.ts') },
  { find: /^@finishline\/server$/, replacement: src('progress-server/src/index.ts') },
  { find: /^@finishline\/client\/sse$/, replacement: src('progress-client/src/sse.ts') },
  { find: /^@finishline\/client\/http$/, replacement: src('progress-client/src/http-fallback.ts') },
  { find: /^@finishline\/client\/persist$/, replacement: src('progress-client/src/persist.ts') },
  { find: /^@finishline\/client$/, replacement: src('progress-client/src/index.ts') },
];
