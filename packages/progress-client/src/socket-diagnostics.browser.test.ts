import { describe, expect, it } from 'vitest';
import * as browser from './socket-diagnostics.browser.js';
import * as node from './socket-diagnostics.js';

describe('socket diagnostics in browser builds', () => {
  // What a browser's WebSocket `error` event can be: a plain Event (no message, no error), or what a
  // polyfill or wrapper adds (a message, an Error without a Node code).
  const browserEvents: { message?: unknown; error?: unknown }[] = [
    {},
    new Event('error') as { message?: unknown },
    { message: 'socket hang up' },
    { error: new Error('blocked by the client') },
    { message: '', error: new TypeError('Failed to construct WebSocket') },
  ];

  it.each(browserEvents)('reads %j as the Node module does', (event) => {
    expect(browser.describeSocketError(event)).toEqual(node.describeSocketError(event));
  });

  it('leaves out only what Node reaches: the HTTP status of `ws` and Node error codes', () => {
    const refused = { message: 'Unexpected server response: 403' };
    expect(node.describeSocketError(refused)).toMatchObject({ status: 403 });
    expect(browser.describeSocketError(refused).status).toBeUndefined();
    const econnrefused = {
      error: Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }),
    };
    expect(node.describeSocketError(econnrefused).detail).toMatch(/nothing listens/);
    expect(browser.describeSocketError(econnrefused).detail).toBe(
      'the WebSocket failed: connect ECONNREFUSED',
    );
  });

  it('never refuses headers: a page has no WebSocket that drops them, and the Node module agrees there', () => {
    class PageWebSocket {}
    const page = globalThis as { document?: unknown; WebSocket?: unknown };
    const saved = { document: page.document, WebSocket: page.WebSocket };
    page.document = {};
    page.WebSocket = PageWebSocket;
    try {
      expect(node.headersProblem(PageWebSocket, ['cookie'])).toBeUndefined();
      expect(browser.headersProblem(PageWebSocket, ['cookie'])).toBeUndefined();
    } finally {
      page.document = saved.document;
      page.WebSocket = saved.WebSocket;
      if (saved.document === undefined) delete page.document;
    }
  });
});
