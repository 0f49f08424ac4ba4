// @vitest-environment happy-dom
import {
  Activity,
  act,
  type ComponentProps,
  createElement,
  type ReactNode,
  StrictMode,
  version,
} from 'react';
import { createRoot, hydrateRoot } from 'react-dom/client';
import { renderToString } from 'react-dom/server';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ProgressClientProvider, type ProgressClientProviderProps, useTask } from './react.js';
import { FakeTask } from './testing/fake-server.js';
import { setup } from './testing/harness.js';

/**
 * `useTask` against a fake server, rendered by the real react-dom (this file runs under React 19 in the
 * `client` project, and under React 18 in `client-react18`, see vitest.react18.config.ts).
 */

beforeAll(() => {
  (globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;
});

const containers: HTMLElement[] = [];
afterEach(() => {
  for (const container of containers.splice(0)) container.remove();
});

function Bar({ taskId }: { taskId: string | null }) {
  const task = useTask(taskId);
  return createElement(
    'span',
    null,
    task === null
      ? 'waiting'
      : `${task.status} ${task.seq} ${task.progress?.done ?? '-'}/${task.progress?.total ?? '-'}`,
  );
}

/** Logs what each of its renders saw. */
function Logged({ taskId, renders }: { taskId: string; renders: string[] }) {
  const state = useTask(taskId);
  renders.push(state === null ? 'null' : `${state.taskId}@${state.seq}${state.fatalError ? ' fatal' : ''}`);
  return null;
}

function mount(html = '') {
  const container = document.createElement('div');
  container.innerHTML = html;
  document.body.append(container);
  containers.push(container);
  return container;
}

/** `children` under a provider of `client`. */
function provided(client: ProgressClientProviderProps['client'], ...children: ReactNode[]) {
  return createElement(ProgressClientProvider, { client }, ...children);
}

/** `children` under a provider of `client`, in StrictMode (which mounts, unmounts and mounts again). */
function strict(client: ProgressClientProviderProps['client'], ...children: ReactNode[]) {
  return createElement(StrictMode, null, provided(client, ...children));
}

/** A client on a fake server, and a root in a fresh container to render into. */
function rooted() {
  const { client, server } = setup({ pageEvents: false });
  const container = mount();
  return { client, server, container, root: createRoot(container) };
}

describe(`useTask (React ${version})`, () => {
  it('renders null on the server and opens no socket', async () => {
    const { client, server } = setup({ pageEvents: false });
    const html = renderToString(provided(client, createElement(Bar, { taskId: 't1' })));
    expect(html).toContain('waiting');
    expect(server.sockets).toHaveLength(0);
    await client.close();
  });

  it('follows the task live, shares one watch between components, and unsubscribes after the last unmount', async () => {
    const { client, server, container, root } = rooted();
    const task = new FakeTask('t1', 3);
    const tree = (count: number) =>
      strict(
        client,
        ...Array.from({ length: count }, (_, i) => createElement(Bar, { key: i, taskId: 't1' })),
      );
    client.watch('t0'); // the socket is open before the components mount
    const socket = server.accept();
    await act(async () => root.render(tree(2)));
    const t1Frames = () => socket.sent.filter((frame) => 'taskId' in frame && frame.taskId === 't1');
    // StrictMode mounts, unmounts and mounts again: the watch survives, no unsubscribe/subscribe churn.
    expect(t1Frames()).toEqual([{ type: 'subscribe', taskId: 't1', afterSeq: 0 }]);
    expect(container.textContent).toBe('running 0 -/-running 0 -/-');
    await act(async () => socket.push({ type: 'snapshot', task: task.view() }));
    await act(async () => socket.push({ type: 'event', event: task.item('a') }));
    expect(container.textContent).toBe('running 1 1/3running 1 1/3');
    await act(async () => root.render(tree(1)));
    await act(async () => socket.push({ type: 'event', event: task.item('b') }));
    expect(container.textContent).toBe('running 2 2/3');
    expect(socket.frames('unsubscribe')).toEqual([]);
    await act(async () => root.unmount());
    expect(socket.frames('unsubscribe')).toEqual([{ type: 'unsubscribe', taskId: 't1' }]);
    expect(socket.frames('subscribe').filter((frame) => frame.taskId === 't1')).toHaveLength(1);
    await client.close();
  });

  it('hydrates server HTML without a mismatch, then goes live', async () => {
    const { client, server } = setup({ pageEvents: false });
    const task = new FakeTask('t1', 2);
    const app = provided(client, createElement(Bar, { taskId: 't1' }));
    const container = mount(renderToString(app));
    const problems: unknown[] = [];
    await act(async () => {
      hydrateRoot(container, app, { onRecoverableError: (error: unknown) => problems.push(error) });
    });
    expect(problems).toEqual([]);
    const socket = server.accept();
    task.item('a');
    await act(async () => socket.push({ type: 'snapshot', task: task.view() }));
    expect(container.textContent).toBe('running 1 1/2');
    await act(async () => socket.push({ type: 'event', event: task.end('completed') }));
    expect(container.textContent).toBe('completed 2 1/2');
    await client.close();
  });

  it("hydrates the server's HTML rendered without a client (docs/client.md's SSR pattern) with the page's client", async () => {
    const { client, server } = setup({ pageEvents: false });
    const task = new FakeTask('t1', 2);
    const app = (withClient: typeof client | null) =>
      provided(withClient, createElement(Bar, { taskId: 't1' }));
    const container = mount(renderToString(app(null)));
    const problems: unknown[] = [];
    let root: ReturnType<typeof hydrateRoot> | undefined;
    await act(async () => {
      root = hydrateRoot(container, app(client), {
        onRecoverableError: (error: unknown) => problems.push(error),
      });
    });
    expect(problems).toEqual([]);
    const socket = server.accept();
    await act(async () => socket.push({ type: 'snapshot', task: task.view() }));
    expect(container.textContent).toBe('running 0 0/2');
    await act(async () => root?.unmount());
    await client.close();
  });

  it('switching task ids moves the watch; a null id watches nothing', async () => {
    const { client, server, container, root } = rooted();
    const render = (taskId: string | null) =>
      act(async () => root.render(provided(client, createElement(Bar, { taskId }))));
    await render(null);
    expect(container.textContent).toBe('waiting');
    expect(server.sockets).toHaveLength(0);
    await render('t1');
    const socket = server.accept();
    await render('t2');
    expect(socket.frames('unsubscribe')).toEqual([{ type: 'unsubscribe', taskId: 't1' }]);
    expect(socket.frames('subscribe').map((frame) => frame.taskId)).toEqual(['t1', 't2']);
    await act(async () => root.unmount());
    await client.close();
  });

  it('a component that mounts next to one showing the task shows its state from its first render, not null', async () => {
    const { client, server, root } = rooted();
    const task = new FakeTask('t1', 3);
    const renders: string[] = [];
    const tree = (...children: ReactNode[]) =>
      strict(client, createElement(Bar, { taskId: 't1' }), ...children);
    await act(async () => root.render(tree()));
    const socket = server.accept();
    task.item('a');
    await act(async () => socket.push({ type: 'snapshot', task: task.view() }));
    // Before: the new component rendered null (painted as a flash of "waiting") until its watch opened in an
    // effect after the commit, beside one showing the task at seq 1 in the same commit.
    await act(async () => root.render(tree(createElement(Logged, { key: 'a', taskId: 't1', renders }))));
    expect(renders).not.toContain('null');
    expect(renders.at(-1)).toBe('t1@1');
    // A task that ended badly for the others is tried again by a component that mounts later, not shown ended.
    await act(async () => root.render(tree(createElement(Bar, { key: 'x', taskId: 't2' }))));
    await act(async () =>
      socket.push({ type: 'error', taskId: 't2', code: 'task_not_found', message: 'no such task' } as never),
    );
    renders.length = 0;
    await act(async () =>
      root.render(
        tree(
          createElement(Bar, { key: 'x', taskId: 't2' }),
          createElement(Logged, { key: 'b', taskId: 't2', renders }),
        ),
      ),
    );
    expect(renders).toEqual(expect.arrayContaining(['t2@0']));
    expect(renders).not.toContain('t2@0 fatal');
    expect(socket.frames('subscribe').filter((frame) => frame.taskId === 't2')).toHaveLength(2);
    await act(async () => root.unmount());
    expect(socket.frames('unsubscribe').map((frame) => frame.taskId)).toEqual(['t1', 't2']);
    await client.close();
  });

  it('a component that mounts beside one showing a finished task asks the server again: the id may name a new run', async () => {
    const { client, server, container, root } = rooted();
    const old = new FakeTask('t1', 1);
    const tree = (...children: ReactNode[]) =>
      provided(client, createElement(Bar, { taskId: 't1' }), ...children);
    await act(async () => root.render(tree()));
    const socket = server.accept();
    await act(async () => socket.push({ type: 'snapshot', task: old.view() }));
    await act(async () => socket.push({ type: 'event', event: old.end() }));
    expect(container.textContent).toBe('completed 1 0/1');
    expect(socket.frames('unsubscribe')).toEqual([{ type: 'unsubscribe', taskId: 't1' }]);
    // The id purged and a task created again under it (a nightly job's name); a component mounts for it
    // while the first still shows the old run. Before, it took the first one's store: it showed the old
    // run's end, and the server was never asked (as the client asks it for a new watch after an
    // acknowledged end).
    const rerun = new FakeTask('t1', 3);
    for (const key of ['a', 'b']) rerun.item(key);
    await act(async () => root.render(tree(createElement(Bar, { key: 'b', taskId: 't1' }))));
    expect(socket.frames('subscribe').filter((frame) => frame.taskId === 't1')).toHaveLength(2);
    expect(container.textContent).toBe('completed 1 0/1running 0 -/-');
    await act(async () => socket.push({ type: 'snapshot', task: rerun.view() }));
    expect(container.textContent).toBe('completed 1 0/1running 2 2/3');
    await act(async () => root.unmount());
    await client.close();
  });

  it('a component that mounts after its client was closed shows the closed error as its fatalError, not a throw that unmounts the tree', async () => {
    const { client, container, root } = rooted();
    await client.close();
    const renders: string[] = [];
    const tree = (taskId: string) =>
      strict(client, createElement('b', null, 'header'), createElement(Logged, { taskId, renders }));
    // Before: client.watch() threw `closed` out of React's subscribe, and with no error boundary React
    // unmounted the whole root (a client closed on logout while a route with a progress bar mounted).
    await act(async () => root.render(tree('t1')));
    expect(container.textContent).toBe('header');
    expect(renders.at(-1)).toBe('t1@0 fatal');
    // A new id for the mounted component: the same, for the new task (nothing of t1 under t2's id).
    await act(async () => root.render(tree('t2')));
    expect(container.textContent).toBe('header');
    expect(renders.at(-1)).toBe('t2@0 fatal');
    await act(async () => root.unmount());
  });

  // <Activity> is React 19.2's: under React 18 the import is undefined.
  /** `t1` logged into `renders`, under StrictMode, inside an `<Activity>` of the mode given. */
  const activityTree =
    (client: ProgressClientProviderProps['client'], renders: string[]) => (mode: 'visible' | 'hidden') =>
      strict(
        client,
        createElement(
          Activity,
          { mode } as ComponentProps<typeof Activity>,
          createElement(Logged, { taskId: 't1', renders }),
        ),
      );

  it.skipIf(Activity === undefined)(
    'a component showing a finished task, hidden by <Activity> and shown again, shows its end still and asks the server nothing',
    async () => {
      const { client, server, root } = rooted();
      const task = new FakeTask('t1', 1);
      const renders: string[] = [];
      const tree = activityTree(client, renders);
      await act(async () => root.render(tree('visible')));
      const socket = server.accept();
      await act(async () => socket.push({ type: 'snapshot', task: task.view() }));
      await act(async () => socket.push({ type: 'event', event: task.end('completed') }));
      expect(renders.at(-1)).toBe('t1@1');
      // Hidden, its subscription is let go of (the watch closes); shown again, it subscribes again.
      await act(async () => root.render(tree('hidden')));
      renders.length = 0;
      await act(async () => root.render(tree('visible')));
      // Before: `null`, then the `running` state at seq 0 of a new watch until the server answered, and
      // `task_not_found` in place of the end once the task was purged.
      expect(renders).toEqual(['t1@1', 't1@1']);
      await act(async () =>
        socket.push({ type: 'error', taskId: 't1', code: 'task_not_found', message: 'purged' } as never),
      );
      expect(renders.at(-1)).toBe('t1@1');
      expect(socket.frames('subscribe').filter((frame) => frame.taskId === 't1')).toHaveLength(1);
      await act(async () => root.unmount());
      await client.close();
    },
  );

  it.skipIf(Activity === undefined)(
    'a component showing a running task, hidden by <Activity> and shown again, shows what it showed until the server answers, not null or seq 0',
    async () => {
      const { client, server, root } = rooted();
      const task = new FakeTask('t1', 5);
      const renders: string[] = [];
      const tree = activityTree(client, renders);
      await act(async () => root.render(tree('visible')));
      const socket = server.accept();
      for (const key of ['a', 'b']) task.item(key);
      await act(async () => socket.push({ type: 'snapshot', task: task.view() }));
      expect(renders.at(-1)).toBe('t1@2');
      // Hidden: the watch closes (the task is unsubscribed); shown again: a new watch subscribes.
      await act(async () => root.render(tree('hidden')));
      expect(socket.frames('unsubscribe')).toEqual([{ type: 'unsubscribe', taskId: 't1' }]);
      task.item('c');
      renders.length = 0;
      await act(async () => root.render(tree('visible')));
      expect(socket.frames('subscribe').filter((frame) => frame.taskId === 't1')).toHaveLength(2);
      await act(async () => socket.push({ type: 'snapshot', task: task.view() }));
      // Before: `null`, then seq 0 (nothing known: the bar back at its start) until the server answered.
      expect(renders).not.toContain('null');
      expect(renders).not.toContain('t1@0');
      expect(renders.at(-1)).toBe('t1@3');
      await act(async () => root.unmount());
      await client.close();
    },
  );

  it.skipIf(Activity === undefined)(
    'a component hidden by <Activity> while its client closed, shown again, shows what it showed with the closed error, not seq 0',
    async () => {
      const { client, server, root } = rooted();
      const task = new FakeTask('t1', 5);
      const renders: string[] = [];
      const tree = activityTree(client, renders);
      await act(async () => root.render(tree('visible')));
      const socket = server.accept();
      for (const key of ['a', 'b']) task.item(key);
      await act(async () => socket.push({ type: 'snapshot', task: task.view() }));
      expect(renders.at(-1)).toBe('t1@2');
      await act(async () => root.render(tree('hidden')));
      await client.close();
      renders.length = 0;
      await act(async () => root.render(tree('visible')));
      // As a component left visible shows its client's close: its last state, with the `closed` error.
      // Before: seq 0, `running`, nothing known (the bar back at its start) beside the error.
      expect(renders).not.toContain('t1@0 fatal');
      expect(renders.at(-1)).toBe('t1@2 fatal');
      await act(async () => root.unmount());
    },
  );

  it('an empty id watches nothing, as null does: the skip pattern of an id not known yet (a form field, a query parameter)', async () => {
    const { client, server, container, root } = rooted();
    const render = (taskId: string) =>
      act(async () => root.render(provided(client, createElement(Bar, { taskId }))));
    // Before: client.watch('') threw invalid_input out of the subscribe, into the nearest error boundary.
    await render('');
    expect(container.textContent).toBe('waiting');
    expect(server.sockets).toHaveLength(0);
    await render('t1');
    const socket = server.accept();
    await render('');
    expect(container.textContent).toBe('waiting');
    expect(socket.frames('unsubscribe')).toEqual([{ type: 'unsubscribe', taskId: 't1' }]);
    await act(async () => root.unmount());
    await client.close();
  });
});
