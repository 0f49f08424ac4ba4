import { defineConfig } from 'vite';

// The UI lives in src/web and builds to dist/web, which the server serves. `npm run dev:web` proxies the API
// and the progress WebSocket to a server started with `npm start` (port 3000).
export default defineConfig({
  root: 'src/web',
  build: { outDir: '../../dist/web', emptyOutDir: true, sourcemap: true },
  server: {
    port: 5173,
    proxy: {
      '/api': 'http://127.0.0.1:3000',
      '/progress': { target: 'http://127.0.0.1:3000', ws: true },
    },
  },
});
