import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, expect, it } from 'vitest';
import { RoundRobinProxy } from '../src/server/round-robin-proxy.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/**
 * The replica launcher's proxy kept its request to the replica open after the client had gone (a page
 * reloaded or closed during an event stream, a long read): the replica never saw the client leave, so an
 * event stream went on until its task ended, and `GET /api/tasks/:id/unrecorded` — whose Kubernetes reads
 * are given up once every caller has gone — read on for callers that had left.
 */
it('a client leaving before the answer ends closes the request to the replica', async () => {
  let replicaSawClose!: () => void;
  const closed = new Promise<void>((resolve) => {
    replicaSawClose = resolve;
  });
  let started!: () => void;
  const streaming = new Promise<void>((resolve) => {
    started = resolve;
  });
  // A replica answering with a stream that never ends by itself.
  const replica = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(': open\n\n');
    res.on('close', () => replicaSawClose());
    started();
  });
  await new Promise<void>((resolve) => replica.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => {
    replica.closeAllConnections();
    return new Promise((resolve) => replica.close(resolve));
  });
  const proxy = new RoundRobinProxy([`http://127.0.0.1:${(replica.address() as AddressInfo).port}`]);
  const url = await proxy.listen(0);
  cleanups.push(() => proxy.close());
  const client = http.get(`${url}/progress/tasks/t/stream`, (res) => {
    res.once('data', () => client.destroy());
  });
  client.on('error', () => undefined);
  await streaming;
  const seen = await Promise.race([
    closed.then(() => true),
    new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 3000)),
  ]);
  expect(seen).toBe(true);
});
