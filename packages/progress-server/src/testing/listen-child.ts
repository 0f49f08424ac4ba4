/**
 * A server in its own process, for the descriptor-exhaustion test: the test bundles this file with esbuild
 * (Node 20 runs no TypeScript) and starts it under `ulimit -n 1024`. It prints one JSON line
 * `{ "port": n }` once listening, then answers each `stats` line on stdin with
 * `{ "connections", "sockets", "dropped" }`, and exits on `exit`.
 *
 * @module
 */
import { createInterface } from 'node:readline';
import { MemoryProgressStore } from '@finishline/core';
import { ProgressServer } from '../progress-server.js';

const server = await ProgressServer.listen(
  {
    store: new MemoryProgressStore(),
    authenticate: (request) => {
      const user = request.headers['x-user'];
      return typeof user === 'string' && user !== '' ? { id: user } : null;
    },
  },
  { port: 0, host: '127.0.0.1' },
);
const httpServer = server.httpServer;
if (httpServer === undefined) throw new Error('listen() created no server');
const address = httpServer.address();
const port = typeof address === 'object' && address !== null ? address.port : 0;
process.stdout.write(`${JSON.stringify({ port })}\n`);

for await (const line of createInterface({ input: process.stdin })) {
  if (line === 'stats') {
    const connections = await new Promise<number>((resolve) =>
      httpServer.getConnections((_error, count) => resolve(count)),
    );
    // Read defensively: the test is also run against servers older than this metric.
    const counter = (server.metrics as Partial<typeof server.metrics>).connectionsDropped;
    const dropped = counter === undefined ? { values: [] } : await counter.get();
    process.stdout.write(
      `${JSON.stringify({
        connections,
        sockets: server.connectionCount,
        dropped: Object.fromEntries(dropped.values.map((v) => [String(v.labels.reason), v.value])),
      })}\n`,
    );
  } else if (line === 'exit') {
    await server.close({ timeoutMs: 500 });
    process.exit(0);
  }
}
