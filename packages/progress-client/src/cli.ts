#!/usr/bin/env node
/**
 * The `finishline` bin: `npx finishline watch <url> <taskId>`. See {@link runCli} for the options and
 * the exit codes.
 *
 * @module
 */
import { runCli } from './cli-main.js';
import type { WebSocketConstructorLike } from './options.js';

/** `ws` when the app has it (it sends headers); otherwise Node's built-in WebSocket (Node 22+). */
async function webSocket(): Promise<WebSocketConstructorLike | undefined> {
  try {
    const ws = (await import('ws')) as unknown as { WebSocket: WebSocketConstructorLike };
    return ws.WebSocket;
  } catch {
    return (globalThis as { WebSocket?: WebSocketConstructorLike }).WebSocket;
  }
}

const interrupt = new AbortController();
// The reason tells runCli which exit code to end with (130 or 143, as a shell reports the signal).
process.once('SIGINT', () => interrupt.abort('SIGINT'));
process.once('SIGTERM', () => interrupt.abort('SIGTERM'));
process.exitCode = await runCli(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  WebSocket: await webSocket(),
  signal: interrupt.signal,
  env: process.env,
});
