import { MemoryProgressStore } from '@finishline/core';
import { afterEach, describe, expect, it } from 'vitest';
import type { ProgressLogger } from './logger.js';
import { describeError, guardLogger } from './logger.js';
import { ProgressServer } from './progress-server.js';
import { upgradeStatus } from './testing/harness.js';

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

describe('describeError', () => {
  it('describes any thrown value, one without a string form too, and never throws', () => {
    const noString = Object.create(null);
    const throwingToString = {
      toString() {
        throw new Error('no');
      },
    };
    const throwingMessage = new Error('x');
    Object.defineProperty(throwingMessage, 'message', {
      get() {
        throw new Error('no');
      },
    });
    for (const value of [noString, throwingToString, throwingMessage]) {
      expect(describeError(value)).toEqual({ message: expect.any(String) });
    }
    expect(describeError(Object.assign(new Error('down'), { code: 'E1' }))).toEqual({
      name: 'Error',
      message: 'down',
      code: 'E1',
    });
    expect(describeError('plain')).toEqual({ message: 'plain' });
  });

  it('keeps a server alive whose authenticate hook throws a value without a string form, and refuses the upgrade 500', async () => {
    process.on('unhandledRejection', onUnhandled);
    const server = await ProgressServer.listen(
      {
        store: new MemoryProgressStore(),
        authenticate: () => {
          throw Object.create(null);
        },
        // Before, only this deadline ended the upgrade (a hang-up, not a 500).
        upgradeTimeoutMs: 2000,
      },
      { port: 0, host: '127.0.0.1' },
    );
    try {
      const address = server.httpServer?.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      // Until 6 December 2026 logging the hook's fault threw in turn: the upgrade went unanswered until
      // upgradeTimeoutMs, and the rejection left unhandled ended the process (Node's default).
      expect((await upgradeStatus(`ws://127.0.0.1:${port}/progress`, {})).status).toBe(500);
      await nextTurn();
      expect(unhandled).toEqual([]);
    } finally {
      await server.close({ timeoutMs: 1000 });
    }
  });
});
