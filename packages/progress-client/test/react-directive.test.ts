import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { describe, expect, it } from 'vitest';

// The React entry's `'use client'` directive must reach the published files (tsup bundles each entry
// with esbuild, which keeps an entry's directives at the top of its output): Next.js's App Router reads it
// there to put the hook and the provider on the client side of a Server Component that imports them.
// Without it, such an import failed inside React's server build (`createContext is not a function`) instead
// of with Next's own message naming the client component.
describe('@finishline/client/react', () => {
  it("starts with 'use client' in the ESM and CJS builds of the entry", async () => {
    for (const format of ['esm', 'cjs'] as const) {
      const result = await build({
        entryPoints: [fileURLToPath(new URL('../src/react.ts', import.meta.url))],
        bundle: true,
        format,
        platform: 'neutral',
        external: ['react'],
        target: 'node20',
        write: false,
        logLevel: 'silent',
      });
      const text = result.outputFiles[0]?.text ?? '';
      // Directives only before it: a directive after any statement is a plain string.
      expect(text).toMatch(/^(?:"use strict";\s*)?"use client";/);
    }
  });
});
