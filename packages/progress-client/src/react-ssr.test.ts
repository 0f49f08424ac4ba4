// @vitest-environment node
import { createElement } from 'react';
import { renderToString } from 'react-dom/server';
import { expect, it } from 'vitest';
import { ProgressClient } from './progress-client.js';
import { ProgressClientProvider, useTask } from './react.js';

/**
 * `useTask` in server rendering as it really runs: in Node, with no `window`, no `location` and (in Node
 * 20) no `WebSocket` (react.test.ts renders on a page, under happy-dom, with a client wired to a fake
 * server). This file runs under React 19 (`client`) and React 18 (`client-react18`).
 */

function Bar({ taskId }: { taskId: string }) {
  const task = useTask(taskId);
  return createElement('span', null, task === null ? 'waiting' : task.status);
}

it('server rendering with the documented client (none on the server) renders null, opens nothing and leaves no timer', () => {
  // Why there is no client on the server: the client of docs/client.md's example cannot be made there.
  // (Until 6 December 2026 the docs made it at module scope, which runs in server rendering too, and the
  // provider's type took no `null`: the page's render threw `invalid_input` from the constructor.)
  expect(() => new ProgressClient({ url: '/progress' })).toThrow(
    expect.objectContaining({ code: 'invalid_input' }),
  );
  // docs/client.md's example, as it runs in server rendering.
  const client = typeof window === 'undefined' ? null : new ProgressClient({ url: '/progress' });
  const before = process.getActiveResourcesInfo();
  const html = renderToString(
    createElement(ProgressClientProvider, { client }, createElement(Bar, { taskId: 't-42' })),
  );
  expect(html).toBe('<span>waiting</span>');
  expect(process.getActiveResourcesInfo()).toEqual(before);
});
