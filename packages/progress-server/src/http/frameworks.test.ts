import type { AddressInfo } from 'node:net';
import { MemoryProgressStore } from '@finishline/core';
import express from 'express';
import Fastify from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { ProgressServer } from '../progress-server.js';

/**
 * The README's integration recipes, run against the real frameworks: the HTTP API mounted in Express and
 * in Fastify, and the WebSocket attached to the server each framework created.
 */

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const byHeader = (request: { headers: Record<string, string | string[] | undefined> }) => {
  const user = request.headers['x-user'];
  return typeof user === 'string' ? { id: user } : null;
};

/** Subscribes over the WebSocket and resolves with the first snapshot frame. */
async function snapshotOverSocket(
  url: string,
  taskId: string,
): Promise<{ type: string; task: { id: string } }> {
  const socket = new WebSocket(url, 'finishline.v1', { headers: { 'x-user': 'alice' } });
  try {
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no snapshot within 10 s')), 10_000);
      socket.on('error', reject);
      socket.on('open', () => socket.send(JSON.stringify({ type: 'subscribe', taskId, afterSeq: 0 })));
      socket.on('message', (data) => {
        const frame = JSON.parse(String(data));
        if (frame.type === 'snapshot') {
          clearTimeout(timer);
          resolve(frame);
        }
      });
    });
  } finally {
    socket.close();
  }
}

describe('framework integration', () => {
  it('Express: app.use(mount, handler) serves the API, passes other routes on, and the socket attaches to app.listen()', async () => {
    const app = express();
    const httpServer = app.listen(0, '127.0.0.1');
    await new Promise<void>((resolve) => httpServer.once('listening', () => resolve()));
    const progress = new ProgressServer({
      store: new MemoryProgressStore(),
      server: httpServer,
      authenticate: byHeader,
    });
    app.use('/api', progress.httpHandler({ basePath: '/api/progress' }));
    app.get('/api/other', (_request, response) => void response.status(418).end());
    cleanups.push(async () => {
      await progress.close({ timeoutMs: 500 });
      await new Promise((resolve) => httpServer.close(resolve));
    });

    const task = await progress.tasks.create({ owner: 'alice', kind: 'k', total: 1 });
    await task.item({ key: 'node-1', ok: true });
    const base = `http://127.0.0.1:${(httpServer.address() as AddressInfo).port}`;
    const own = await fetch(`${base}/api/progress/tasks/${task.id}`, { headers: { 'x-user': 'alice' } });
    expect(own.status).toBe(200);
    expect(await own.json()).toMatchObject({ task: { id: task.id, done: 1 } });
    const foreign = await fetch(`${base}/api/progress/tasks/${task.id}`, {
      headers: { 'x-user': 'mallory' },
    });
    // Another owner's task answers exactly like a missing one (no existence oracle).
    expect(foreign.status).toBe(404);
    expect(JSON.stringify(await foreign.json())).not.toContain('node-1');
    expect((await fetch(`${base}/api/other`)).status).toBe(418);
    const cancelled = await fetch(`${base}/api/progress/tasks/${task.id}/cancel`, {
      method: 'POST',
      headers: { 'x-user': 'alice', 'content-type': 'application/json' },
      body: JSON.stringify({ reason: 'from express' }),
    });
    expect(cancelled.status).toBe(200);
    expect((await progress.tasks.get(task.id))?.status).toBe('cancelled');

    const frame = await snapshotOverSocket(`${base.replace('http', 'ws')}/progress`, task.id);
    expect(frame.task.id).toBe(task.id);
  });

  it('Fastify: a hijacked catch-all route serves the API (with a body Fastify parsed), and the socket attaches to app.server', async () => {
    const app = Fastify();
    const progress = new ProgressServer({
      store: new MemoryProgressStore(),
      server: app.server,
      authenticate: byHeader,
    });
    const handler = progress.httpHandler();
    app.all('/progress/*', (request, reply) => {
      reply.hijack();
      handler(Object.assign(request.raw, { body: request.body }), reply.raw);
    });
    await app.listen({ port: 0, host: '127.0.0.1' });
    cleanups.push(async () => {
      await progress.close({ timeoutMs: 500 });
      await app.close();
    });

    const task = await progress.tasks.create({ owner: 'alice', kind: 'k' });
    const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    const own = await fetch(`${base}/progress/tasks/${task.id}`, { headers: { 'x-user': 'alice' } });
    expect(own.status).toBe(200);
    expect(await own.json()).toMatchObject({ task: { id: task.id, status: 'running' } });
    expect((await fetch(`${base}/progress/tasks/${task.id}`)).status).toBe(401);
    const cancelled = await fetch(`${base}/progress/tasks/${task.id}/cancel`, {
      method: 'POST',
      headers: { 'x-user': 'alice', 'content-type': 'application/json' },
      body: JSON.stringify({ reason: 'parsed by fastify' }),
    });
    expect(cancelled.status).toBe(200);
    const events = await fetch(`${base}/progress/tasks/${task.id}/events?afterSeq=0`, {
      headers: { 'x-user': 'alice' },
    });
    expect(await events.json()).toMatchObject({
      events: [{ type: 'cancelled', reason: 'parsed by fastify' }],
    });

    const frame = await snapshotOverSocket(`${base.replace('http', 'ws')}/progress`, task.id);
    expect(frame.task.id).toBe(task.id);
  });
});
