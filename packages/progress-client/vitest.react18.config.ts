import { fileURLToPath } from 'node:url';
import { defineProject } from 'vitest/config';
import { workspaceAliases } from '../../vitest.shared.js';

// The React tests again under React 18: `react` and `react-dom` resolve to test/react-18 (installed by
// `npm run test:react18`), where react-dom 18 finds its own react 18 as a peer.
const react18 = fileURLToPath(new URL('./test/react-18/node_modules/', import.meta.url));

export default defineProject({
  resolve: {
    alias: [...workspaceAliases, { find: /^react(-dom)?(\/.*)?$/, replacement: `${react18}react$1$2` }],
  },
  test: {
    name: 'client-react18',
    include: ['src/react.test.ts', 'src/react-ssr.test.ts'],
  },
});
