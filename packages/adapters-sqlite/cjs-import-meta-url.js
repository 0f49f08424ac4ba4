// `import.meta.url` for the CommonJS build (see tsup.config.ts): pathToFileURL escapes what a URL built
// by hand from `__filename` would not (`#`, `%`, `?`).
import { pathToFileURL } from 'node:url';

export const importMetaUrl = pathToFileURL(__filename).href;
