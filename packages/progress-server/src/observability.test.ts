import { describe, expect, it } from 'vitest';
import type { ProgressLogger } from './logger.js';
import { RawClient, sleep, tokenAuth, upgradeStatus } from './testing/harness.js';
import { useServerSession } from './testing/session.js';

/**
 * What a client controls never reaches a metric label or a log line: labels stay within their fixed
 * lists however many distinct hostile inputs arrive, and credentials stay out of the logs
 * (docs/operations.md, "What clients can put in metrics and logs").
 */

const session = useServerSession();

/** Every record the server logged, at every level. */
function recordingLogger(): { logger: ProgressLogger; records: unknown[] } {
  const records: unknown[] = [];
  const log = (level: string) => (obj: Record<string, unknown>, msg?: string) => {
    records.push({ level, obj, msg });
  };
  return {
    records,
    logger: { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') },
  };
}

/** One round of hostile input, `n` varying every value a client sends. */
async function hostileRound(wsUrl: string, httpUrl: string, n: number): Promise<void> {
  const secret = `s3cret-${n}`;
  await upgradeStatus(`${wsUrl}?token=${secret}`, { origin: `https://evil-${n}.example` });
  await upgradeStatus(`${wsUrl}?token=${secret}`, { 'sec-websocket-protocol': `bogus.v${n}` });
  await upgradeStatus(`${wsUrl}?token=${secret}`, {
    authorization: `Bearer ${secret}`,
    cookie: `session=${secret}`,
    'user-agent': `agent/${n} \u00e9vil`,
  });
  const client = await RawClient.connect(`${wsUrl}?token=token-u${n}`);
  client.send({ type: 'auth', token: secret });
  client.send({ type: 'subscribe', id: `r-${n}`, taskId: `no-such-${n}`, afterSeq: 0 });
  client.send({ type: 'subscribe', id: `r\n${n}`, taskId: `bad\nid ${n}`, afterSeq: 0 });
  client.send({ type: `teleport-${n}` });
  client.sendRaw(`{not json ${secret}`);
  await client.sync().catch(() => {});
  client.ws.close(4000 + (n % 900), `bye ${secret}\nfake`);
  await client.closed;
  await fetch(`${httpUrl}/progress/tasks/${encodeURIComponent(`x\n${n}`)}?token=${secret}`, {
    headers: { authorization: `Bearer ${secret}`, cookie: `session=${secret}` },
  });
  await fetch(`${httpUrl}/progress/${secret}/healthz`);
}

describe('observability under hostile input', () => {
  it('keeps every label within its fixed list and the output bounded, and no credential in the logs', async () => {
    const { logger, records } = recordingLogger();
    await session.start({
      authenticate: () => null,
      authenticateToken: tokenAuth,
      tokenQueryParam: 'token',
      allowedOrigins: ['https://app.example'],
      logger,
    });
    const { wsUrl, httpUrl, server } = session.env;
    for (let n = 0; n < 5; n++) await hostileRound(wsUrl, httpUrl, n);
    await sleep(50);
    const shape = (text: string) =>
      text
        .split('\n')
        .filter((line) => line !== '' && !line.startsWith('#'))
        .map((line) => line.replace(/ [0-9.e+-]+$/, ''));
    const before = shape(await server.metrics.registry.metrics());
    for (let n = 5; n < 25; n++) await hostileRound(wsUrl, httpUrl, n);
    await sleep(50);
    const text = await server.metrics.registry.metrics();
    // The rounds were refused where they should be (they exercised the labels checked below).
    for (const code of ['forbidden', 'unsupported_protocol', 'unauthenticated'])
      expect(text).toContain(`upgrades_rejected_total{code="${code}"}`);
    expect(text).toContain('frames_rejected_total{code="invalid_frame"}');
    // Twenty more rounds of new values change counts only: no series was added.
    expect(shape(text)).toEqual(before);
    for (let n = 0; n < 25; n++) {
      expect(text).not.toContain(`evil-${n}`);
      expect(text).not.toContain(`bogus.v${n}`);
      expect(text).not.toContain(`no-such-${n}`);
    }
    const labels = [...text.matchAll(/\{([^}]*)\}/g)].flatMap(([, inner]) => (inner ?? '').split(','));
    for (const label of labels) expect(label).toMatch(/^[a-z_]+="[A-Za-z_.+0-9]+"$/);
    expect(records.length).toBeGreaterThan(0);
    const logged = JSON.stringify(records);
    expect(logged).not.toContain('s3cret');
    for (const record of records as Array<{ msg?: string }>) expect(record.msg ?? '').not.toMatch(/[\r\n]/);
  });
});
