import { MemoryProgressStore } from '@finishline/core';
import { afterEach, describe, expect, it } from 'vitest';
import type { ProgressLogger } from './logger.js';
import { guardLogger } from './logger.js';
import { ProgressServer } from './progress-server.js';

/** Rejections nobody handled while a test ran (Node ends the process on one by default). */
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => {
  unhandled.push(reason);
};

afterEach(() => {
  process.off('unhandledRejection', onUnhandled);
  unhandled.length = 0;
});

/** Long enough for Node to report a rejection left unhandled: it does so once the microtasks ran out. */
const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

describe('guardLogger', () => {
  it('ignores a logger that throws', () => {
    const broken = () => {
      throw new Error('log sink down');
    };
    const logger = guardLogger({ debug: broken, info: broken, warn: broken, error: broken });
    expect(() => logger.warn({ taskId: 't' }, 'something')).not.toThrow();
  });

  it('handles the rejection of an async logger, as it ignores a throw', async () => {
    process.on('unhandledRejection', onUnhandled);
    const seen: string[] = [];
    const broken = async (_obj: Record<string, unknown>, msg?: string) => {
      seen.push(msg ?? '');
      throw new Error('log sink down');
    };
    const logger = guardLogger({ debug: broken, info: broken, warn: broken, error: broken });
    logger.debug({}, 'a');
    logger.info({}, 'b');
    logger.warn({}, 'c');
    logger.error({}, 'd');
    await nextTurn();
    expect(seen).toEqual(['a', 'b', 'c', 'd']);
    // Until 6 December 2026 each of these was an unhandled rejection, which ends a Node process.
    expect(unhandled).toEqual([]);
  });

  it("keeps a server whose async logger rejects alive through its start and close (the close's log line)", async () => {
    process.on('unhandledRejection', onUnhandled);
    const reject = async () => {
      throw new Error('log sink down');
    };
    const logger: ProgressLogger = { debug: reject, info: reject, warn: reject, error: reject };
    const server = await ProgressServer.listen(
      { store: new MemoryProgressStore(), authenticateToken: () => null, logger },
      { port: 0, host: '127.0.0.1' },
    );
    await server.close({ timeoutMs: 1000 });
    await nextTurn();
    expect(unhandled).toEqual([]);
  });
});
