import { describe, expect, it } from 'vitest';
import * as browser from './socket-platform.browser.js';
import * as node from './socket-platform.js';

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

  it('decodes what a browser hands over as the Node module does: strings, and a binary frame as a Blob', () => {
    const frames: unknown[] = [
      '{"type":"pong","time":1}',
      '{"type":"pong","time":-1}',
      'not json',
      new Blob(['{"type":"pong","time":1}']),
    ];
    for (const data of frames)
      expect(browser.decodeSocketData(data)).toStrictEqual(node.decodeSocketData(data));
    // What only Node hands over: bytes, which the protocol lets a receiver accept.
    const bytes = new TextEncoder().encode('{"type":"pong","time":1}');
    expect(node.decodeSocketData(bytes).ok).toBe(true);
    expect(browser.decodeSocketData(bytes).ok).toBe(false);
  });
});
