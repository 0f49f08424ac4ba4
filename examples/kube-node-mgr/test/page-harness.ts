// What the page tests (happy-dom) share: the page's markup, and a fake of src/web/connection.js whose watches
// never finish. A test takes this module as that one's mock:
//   vi.mock('../src/web/connection.js', () => import('./page-harness.js'));
import { readFileSync } from 'node:fs';

/** Puts src/web/index.html's body, without its scripts, in the document. */
export function renderPage(): void {
  const html = readFileSync(`${import.meta.dirname}/../src/web/index.html`, 'utf8');
  const body = /<body>([\s\S]*)<\/body>/.exec(html)?.[1] ?? '';
  document.body.innerHTML = body.replace(/<script[\s\S]*?<\/script>/g, '');
}

/** A watch that stays running, and tells no one anything. */
class FakeWatch {
  done = new Promise(() => undefined);
  on() {
    return this;
  }
  off() {
    return this;
  }
  subscribe() {
    return () => undefined;
  }
  getSnapshot() {
    return { progress: null, finished: false, status: 'running', error: null, finishedAt: null };
  }
  close() {}
}

/** The mocked connection module's progress client: its watches never finish. */
export const client = { watch: () => new FakeWatch() };
