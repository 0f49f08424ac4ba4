// Bundles the server entry points with esbuild (dependencies stay external, resolved from node_modules).
import { build } from 'esbuild';

const entries = {
  server: 'src/server/main.ts',
  replicas: 'src/server/replicas.ts',
  'hash-password': 'src/server/hash-password.ts',
};
await build({
  entryPoints: entries,
  outdir: 'dist',
  outExtension: { '.js': '.mjs' },
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  packages: 'external',
  sourcemap: true,
  logLevel: 'warning',
});
