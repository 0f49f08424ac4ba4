import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { gate } from '../testing/harness.js';
import { HTTP_STATUS, HttpError, readJsonBody } from './http-request.js';

/** Reading a request's JSON body from the stream, against a real server and a raw client socket. */

const cleanups: Array<() => void> = [];

afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

/** A POST announcing 100 bytes of body and sending 7 of them. */
const PARTIAL_POST =
  'POST /ack HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"seq":';

/**
 * A server whose one request waits for `before`, then reads its body; resolves with what the read gave
 * (a value or an error), so a read that never ends fails the test by its timeout.
 */
async function readOneBody(
  before: (request: IncomingMessage, client: Socket) => Promise<void>,
): Promise<{ value?: unknown; error?: unknown }> {
  let client: Socket | undefined;
  const outcome = new Promise<{ value?: unknown; error?: unknown }>((resolve) => {
    const server: Server = createServer((request) => {
      void before(request, client as Socket)
        .then(() => readJsonBody(request))
        .then(
          (value) => resolve({ value }),
          (error: unknown) => resolve({ error }),
        );
    });
    cleanups.push(() => server.close());
    server.listen(0, '127.0.0.1', () => {
      client = connect((server.address() as AddressInfo).port, '127.0.0.1', () =>
        client?.write(PARTIAL_POST),
      );
      cleanups.push(() => client?.destroy());
    });
  });
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<{ error: Error }>((resolve) => {
    timer = setTimeout(() => resolve({ error: new Error('the body read never ended') }), 5000);
  });
  cleanups.push(() => clearTimeout(timer));
  return Promise.race([outcome, hung]);
}

describe('readJsonBody', () => {
  it('a client leaving in the middle of the body ends the read as invalid_input, not as an unexpected error', async () => {
    const { error } = await readOneBody(async (_request, client) => {
      // The read starts while the client is still there; it leaves just after.
      setImmediate(() => client.destroy());
    });
    expect(error).toBeInstanceOf(HttpError);
    expect(error).toMatchObject({ code: 'invalid_input', status: 400 });
  });

  it('a client gone before the read starts (its close already emitted) ends the read at once', async () => {
    const { error } = await readOneBody(async (request, client) => {
      // As when the client leaves while an asynchronous authenticate hook runs.
      const closed = gate();
      request.on('close', closed.open);
      client.destroy();
      await closed.promise;
    });
    expect(error).toBeInstanceOf(HttpError);
    expect(error).toMatchObject({ code: 'invalid_input', status: 400 });
  });
});

describe('HTTP_STATUS', () => {
  it("is the HTTP column of docs/errors.md's table of codes", () => {
    const doc = readFileSync(new URL('../../../../docs/errors.md', import.meta.url), 'utf8');
    // `| \`task_not_found\` | raised when | 404 | what to do |`
    const stated = Object.fromEntries(
      [...doc.matchAll(/^\| `(\w+)` \|[^|]*\| (\d{3}) \|/gm)].map(([, code, status]) => [
        code,
        Number(status),
      ]),
    );
    expect(stated).toEqual(HTTP_STATUS);
  });
});
