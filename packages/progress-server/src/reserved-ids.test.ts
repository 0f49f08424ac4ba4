import { MemoryProgressStore } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { ProgressServer } from './progress-server.js';
import { bearer, jsonHeaders, rawHttp } from './testing/raw-http.js';
import { rawSession } from './testing/raw-session.js';
import type { Frame } from './testing/raw-socket.js';

/**
 * `__proto__`, `constructor` and `prototype` match `ID_PATTERN` but are refused as ids (docs/protocol.md,
 * Limits): heartbeat `seqs` are keyed by task id, and a client decoder refuses a heartbeat with any of
 * them as an own key (`__proto__` cannot even be assigned as one), so a task under one of these names,
 * followed on a socket, would make every heartbeat of that socket invalid or drop the task from it. A
 * raw client (plain `ws` and `node:http`, as in raw-protocol-2.test.ts) checks that no entry point lets
 * one in, and that a server whose own id is one of them is refused at construction: that id goes out in
 * every `hello`, which clients refuse, and is the owner of every lease, which stores refuse.
 */

const RESERVED = ['__proto__', 'constructor', 'prototype'] as const;
const REFUSAL = 'must not be __proto__, constructor or prototype';

const { start, connect } = rawSession();

describe('the ids __proto__, constructor and prototype', () => {
  it('are refused as task ids at creation, subscribe, ack and every HTTP route; heartbeats stay valid', async () => {
    const env = await start({ heartbeatIntervalMs: 50 });
    const { server, store } = env;
    for (const id of RESERVED) {
      await expect(server.tasks.create({ id, owner: 'alice', kind: 'k' })).rejects.toMatchObject({
        code: 'invalid_input',
        message: expect.stringContaining(REFUSAL),
      });
      await expect(store.createTask({ id, owner: 'alice', kind: 'k' })).rejects.toMatchObject({
        code: 'invalid_input',
      });
    }
    const normal = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await normal.progress({ done: 1 });

    const client = await connect();
    client.send({ type: 'subscribe', taskId: normal.id, afterSeq: 0 });
    await client.next((f) => f.type === 'snapshot' && f.task.id === normal.id);
    for (const id of RESERVED) {
      client.send({ type: 'subscribe', id: `s-${id}`, taskId: id, afterSeq: 0 });
      client.send({ type: 'ack', id: `a-${id}`, taskId: id, seq: 1 });
    }
    const answers = await Promise.all(
      RESERVED.flatMap((id) => [`s-${id}`, `a-${id}`]).map((requestId) =>
        client.next((f) => f.type === 'error' && f.requestId === requestId),
      ),
    );
    for (const answer of answers) {
      expect(answer).toMatchObject({ code: 'invalid_frame', message: expect.stringContaining(REFUSAL) });
    }
    // The socket follows the normal task only, and its heartbeats say so: no key a client refuses.
    const from = client.frames.length;
    const beat = await client.next((f: Frame) => f.type === 'heartbeat', from);
    expect(Object.keys(beat.seqs)).toEqual([normal.id]);
    expect(beat.seqs[normal.id]).toBe(1);

    for (const id of RESERVED) {
      const path = `/progress/tasks/${encodeURIComponent(id)}`;
      for (const [method, suffix] of [
        ['GET', ''],
        ['GET', '/events'],
        ['GET', '/stream'],
        ['POST', '/cancel'],
        ['POST', '/ack'],
      ] as const) {
        const answer = await rawHttp(env.httpUrl, method, `${path}${suffix}`, {
          headers: method === 'POST' ? jsonHeaders() : bearer(),
          ...(suffix === '/ack' ? { body: JSON.stringify({ seq: 1 }) } : {}),
        });
        expect([method, suffix, answer.status]).toEqual([method, suffix, 400]);
        expect(answer.json()).toMatchObject({ error: { code: 'invalid_input' } });
      }
    }
  });

  it.each(RESERVED)('are refused as the server id at construction (%s)', (serverId) => {
    const store = new MemoryProgressStore();
    expect(() => new ProgressServer({ store, authenticate: () => ({ id: 'alice' }), serverId })).toThrow(
      expect.objectContaining({ code: 'invalid_input', message: expect.stringContaining('serverId') }),
    );
  });
});
