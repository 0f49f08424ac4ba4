import type { Plugin } from 'esbuild';

/** An esbuild plugin: relative `./name.js` imports resolve to `name.browser.ts` where there is one. */
export declare const browserVariants: Plugin;
