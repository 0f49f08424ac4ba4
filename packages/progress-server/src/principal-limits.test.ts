import { ErrorCode } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { FairReads, STALE_SWEEP_INTERVAL_MS } from './hub/fair-reads.js';
import { PrincipalLimits } from './principal-limits.js';
import {
  gate,
  RawClient,
  serverFrameViolations,
  sleep,
  startServer,
  type TestServer,
} from './testing/harness.js';

/**
 * Issue 10, item 5: one user opened 5,000 sockets, none refused, and its subscriptions' reads delayed
 * everyone. Per-principal caps on sockets and subscriptions, and fair subscription reads.
 */

let env: TestServer | undefined;
const clients: RawClient[] = [];

afterEach(async () => {
  await Promise.all(clients.splice(0).map((client) => client.close()));
  await env?.close();
  env = undefined;
  expect(serverFrameViolations.splice(0)).toEqual([]);
});

async function connect(user: string): Promise<RawClient> {
  if (env === undefined) throw new Error('no server');
  const client = await RawClient.connect(env.wsUrl, { user, hello: false });
  clients.push(client);
  return client;
}

async function metric(name: 'principalLimits', limit: string): Promise<number> {
  const values = (await env!.server.metrics[name].get()).values;
  return values.find((value) => value.labels.limit === limit)?.value ?? 0;
}

describe('per-principal caps', () => {
  it('refuses a socket over maxSocketsPerPrincipal with too_many_sockets and 4009; others unaffected', async () => {
    env = await startServer({ maxSocketsPerPrincipal: 3 });
    const own = await Promise.all([1, 2, 3].map(() => connect('mallory')));
    await Promise.all(own.map((client) => client.next((frame) => frame.type === 'hello')));
    const extra = await connect('mallory');
    expect(await extra.next((frame) => frame.type === 'error')).toMatchObject({ code: 'too_many_sockets' });
    expect((await extra.closed).code).toBe(4009);
    expect(extra.frames.some((frame) => frame.type === 'hello')).toBe(false);
    // Another principal is not counted with mallory.
    const alice = await connect('alice');
    await alice.next((frame) => frame.type === 'hello');
    // A closed socket frees its slot.
    await own[0]!.close();
    await expect
      .poll(async () => {
        const again = await connect('mallory');
        const first = await again.next((frame) => frame.type === 'hello' || frame.type === 'error');
        return first.type;
      })
      .toBe('hello');
    expect(await metric('principalLimits', 'sockets')).toBe(1);
  });

  it('refuses an auth frame over maxSocketsPerPrincipal with 4009 after authenticateToken ran: a single-use token is spent', async () => {
    // Tokens that work once, as an application with single-use tickets issues them.
    const spent = new Set<string>();
    env = await startServer({
      maxSocketsPerPrincipal: 1,
      authenticate: () => null,
      authenticateToken: (token) => {
        if (spent.has(token)) return null;
        spent.add(token);
        return { id: 'mallory' };
      },
    });
    const first = new RawClient(env.wsUrl);
    clients.push(first);
    await first.opened;
    first.send({ type: 'auth', token: 'ticket-1', protocol: 2 });
    await first.next((frame) => frame.type === 'hello');
    const second = new RawClient(env.wsUrl);
    clients.push(second);
    await second.opened;
    second.send({ type: 'auth', token: 'ticket-2', protocol: 2 });
    expect((await second.closed).code).toBe(4009);
    // docs/protocol.md and docs/security.md: the cap is checked once the token named the principal, so
    // the refusal spent the token; a retry needs a new one.
    expect(spent.has('ticket-2')).toBe(true);
    await first.close();
    const retry = new RawClient(env.wsUrl);
    clients.push(retry);
    await retry.opened;
    retry.send({ type: 'auth', token: 'ticket-2', protocol: 2 });
    expect((await retry.closed).code).toBe(4001);
  });

  it('refuses a subscription over maxSubscriptionsPerPrincipal, summed over sockets', async () => {
    env = await startServer({ maxSubscriptionsPerPrincipal: 3 });
    const ids: string[] = [];
    for (let i = 0; i < 4; i += 1)
      ids.push((await env.server.tasks.create({ owner: 'mallory', kind: 'k' })).id);
    const a = await connect('mallory');
    const b = await connect('mallory');
    a.send({ type: 'subscribe', id: 's0', taskId: ids[0], afterSeq: 0 });
    a.send({ type: 'subscribe', id: 's1', taskId: ids[1], afterSeq: 0 });
    b.send({ type: 'subscribe', id: 's2', taskId: ids[2], afterSeq: 0 });
    await b.next((frame) => frame.type === 'snapshot');
    b.send({ type: 'subscribe', id: 's3', taskId: ids[3], afterSeq: 0 });
    expect(await b.next((frame) => frame.type === 'error')).toMatchObject({
      code: 'too_many_subscriptions',
      requestId: 's3',
      taskId: ids[3],
    });
    // Unsubscribing frees a slot.
    // Frames of one socket are handled in order: the pong proves the unsubscribe took effect before b asks.
    a.send({ type: 'unsubscribe', taskId: ids[0] });
    a.send({ type: 'ping', id: 'after-unsubscribe' });
    await a.next((frame) => frame.type === 'pong');
    b.send({ type: 'subscribe', id: 's4', taskId: ids[3], afterSeq: 0 });
    await b.next((frame) => frame.type === 'snapshot' && (frame.task as { id: string }).id === ids[3]);
    expect(await metric('principalLimits', 'subscriptions')).toBe(1);
  });

  it("a frame the principal's shared budget refuses costs its socket nothing: the retry passes once the budget refilled", async () => {
    // A clock that stands still until the test moves it: which frame each bucket refuses is exact. Each
    // socket: 2 frames of burst, 1/s; the principal: 2 frames for all its sockets, 2/s.
    const clock = new ManualClock();
    env = await startServer({
      rateLimitPerSecond: 1,
      rateLimitBurst: 2,
      rateLimitPerPrincipalPerSecond: 2,
      maxSubscriptionsPerPrincipal: 1,
      maxRateLimitViolations: 50,
      clock: clock.now,
    });
    const busy = await connect('alice');
    const quiet = await connect('alice');
    await Promise.all([busy, quiet].map((client) => client.next((frame) => frame.type === 'hello')));
    const answers = (client: RawClient, ids: string[]) =>
      Promise.all(ids.map((id) => client.next((frame) => frame.requestId === id)));
    // The busy socket uses up the principal's budget; the quiet one's first two frames are refused by it.
    for (const id of ['b1', 'b2']) busy.send({ type: 'ping', id });
    expect((await answers(busy, ['b1', 'b2'])).map((frame) => frame.type)).toEqual(['pong', 'pong']);
    for (const id of ['q1', 'q2']) quiet.send({ type: 'ping', id });
    const refused = await answers(quiet, ['q1', 'q2']);
    expect(refused.map((frame) => [frame.code, frame.message])).toEqual(
      Array(2).fill([
        'rate_limited',
        "Rate limit exceeded (2 frames/s for all of this principal's sockets); frames are being dropped",
      ]),
    );
    // A second later the principal's budget holds two frames again, and the quiet socket never spent its
    // own: both retries pass. Charged to the socket's own bucket, the refusals left it one token, and the
    // second retry was refused by the socket's limit, though that socket had sent two frames in a second.
    clock.advance(1000);
    for (const id of ['q3', 'q4']) quiet.send({ type: 'ping', id });
    expect((await answers(quiet, ['q3', 'q4'])).map((frame) => [frame.type, frame.message])).toEqual([
      ['pong', undefined],
      ['pong', undefined],
    ]);
  });

  it("charges each HTTP API request to its principal's budget: a flood of lookups of unknown tasks is refused before the store", async () => {
    // Over the socket every subscribe pays a token; over HTTP nothing bounded how many task reads per
    // second one principal's requests made the store do. Budget: 2 requests, 2/s.
    const clock = new ManualClock();
    env = await startServer({
      rateLimitPerPrincipalPerSecond: 2,
      maxSubscriptionsPerPrincipal: 1,
      clock: clock.now,
    });
    const reads = vi.spyOn(env.store, 'getTask');
    const get = async (user: string, taskId: string) => {
      const response = await fetch(`${env!.httpUrl}/progress/tasks/${taskId}`, {
        headers: { 'x-user': user },
      });
      return {
        status: response.status,
        retryAfter: response.headers.get('retry-after'),
        body: await response.json(),
      };
    };
    expect((await get('mallory', 'nope-1')).status).toBe(404);
    expect((await get('mallory', 'nope-2')).status).toBe(404);
    const refused = await get('mallory', 'nope-3');
    expect(refused).toMatchObject({
      status: 429,
      retryAfter: '1',
      body: { error: { code: 'rate_limited' } },
    });
    expect(reads).toHaveBeenCalledTimes(2);
    expect(await metric('principalLimits', 'rate')).toBe(1);
    // Another principal has its own budget; the refused one gets its requests back as the budget refills.
    expect((await get('bob', 'nope-4')).status).toBe(404);
    clock.advance(1000);
    expect((await get('mallory', 'nope-5')).status).toBe(404);
  });
  it("bounds a principal's HTTP requests in progress behind a slow store, and reads nothing for a client that left", async () => {
    // The rate budget bounds how many requests start a second, not how many wait: behind a store that
    // hangs, a principal's requests queued without bound (500 more a second), and every one read the store
    // once it answered, its client gone or not. Cap: maxSubscriptionsPerPrincipal (5 here).
    env = await startServer({ maxSubscriptionsPerPrincipal: 5 });
    const store = gate();
    const original = env.store.getTask.bind(env.store);
    let started = 0;
    vi.spyOn(env.store, 'getTask').mockImplementation(async (taskId) => {
      started += 1;
      await store.promise;
      return original(taskId);
    });
    const request = (user: string, taskId: string) => {
      const client = new AbortController();
      const answer = fetch(`${env!.httpUrl}/progress/tasks/${taskId}`, {
        headers: { 'x-user': user },
        signal: client.signal,
      }).then(
        async (response) => ({ status: response.status, body: await response.json() }),
        () => ({ status: 0, body: undefined }),
      );
      return { answer, leave: () => client.abort() };
    };
    const waiting = Array.from({ length: 5 }, (_, index) => request('mallory', `nope-${index}`));
    // Three reach the store (a principal alone borrows the idle read slots but one), two wait their turn.
    await vi.waitFor(() => expect(started).toBe(3));
    await sleep(100);
    // A sixth is refused at once, without waiting for the store (the gate opens after 2 s without answer).
    const sixth = request('mallory', 'nope-6');
    const opening = setTimeout(() => store.open(), 2000);
    expect(await sixth.answer).toMatchObject({ status: 429, body: { error: { code: 'rate_limited' } } });
    clearTimeout(opening);
    expect(await metric('principalLimits', 'rate')).toBe(1);
    // Another principal has its own count.
    const bob = request('bob', 'nope-7');
    await vi.waitFor(() => expect(started).toBe(4));
    // The clients waiting leave: the two reads still queued are skipped once the store answers.
    for (const { leave } of waiting) leave();
    await Promise.all(waiting.map(({ answer }) => answer));
    await sleep(200);
    store.open();
    expect((await bob.answer).status).toBe(404);
    // Mallory's slots are back: her next request is served, after the reads queued before it.
    expect((await request('mallory', 'nope-8').answer).status).toBe(404);
    expect(started).toBe(5);
    // A client leaving is no store failure.
    expect((await env.server.metrics.storeErrors.get()).values.reduce((sum, v) => sum + v.value, 0)).toBe(0);
  });
  it("charges a list of tasks one token of its principal's budget per 50 tasks it asks for, so authorize runs at most 50 times a token", async () => {
    // A list authorizes each task it lists, as a socket's subscribe does for one token; for the one token
    // of its request a list of 1,000 ran the hook 1,000 times. Budget: 40 tokens, 40/s.
    const clock = new ManualClock();
    const authorize = vi.fn(
      (principal: { id: string }, task: { owner: string }) => task.owner === principal.id,
    );
    env = await startServer({
      rateLimitPerPrincipalPerSecond: 40,
      maxSubscriptionsPerPrincipal: 1,
      clock: clock.now,
      authorize,
    });
    for (let index = 0; index < 100; index += 1) {
      await env.server.tasks.create({ owner: 'mallory', kind: 'k' });
    }
    const list = async (query: string) => {
      const response = await fetch(`${env!.httpUrl}/progress/tasks${query}`, {
        headers: { 'x-user': 'mallory' },
      });
      const body = (await response.json()) as { tasks?: unknown[] };
      return { status: response.status, listed: body.tasks?.length };
    };
    // limit=1000 costs 20 tokens: two such lists, then 429 before the store or the hook.
    expect(await list('?limit=1000')).toEqual({ status: 200, listed: 100 });
    expect(await list('?limit=1000')).toEqual({ status: 200, listed: 100 });
    expect((await list('?limit=1000')).status).toBe(429);
    expect(authorize).toHaveBeenCalledTimes(200);
    expect(await metric('principalLimits', 'rate')).toBe(1);
    // A page of the default size (50) costs one token, as any request: 40 of them a refilled budget.
    clock.advance(1000);
    for (let index = 0; index < 40; index += 1) {
      expect(await list(index % 2 === 0 ? '' : '?limit=50')).toEqual({ status: 200, listed: 50 });
    }
    expect((await list('?limit=50')).status).toBe(429);
  });

  it('lets a list dearer than the whole budget through when the budget is full', async () => {
    // Burst 1: the price of a list of 1,000 (20 tokens) is capped at it, or no such list ever passed.
    const clock = new ManualClock();
    env = await startServer({
      rateLimitPerPrincipalPerSecond: 1,
      maxSubscriptionsPerPrincipal: 1,
      clock: clock.now,
    });
    const list = async () =>
      (await fetch(`${env!.httpUrl}/progress/tasks?limit=1000`, { headers: { 'x-user': 'alice' } })).status;
    expect(await list()).toBe(200);
    expect(await list()).toBe(429);
    clock.advance(1000);
    expect(await list()).toBe(200);
  });
});

describe('HTTP API reads', () => {
  it("reads a principal's burst of requests in its turn, not all at once", async () => {
    // Over the socket a subscribe's reads queue in FairReads (catchUpReadConcurrency in all, a principal
    // alone the idle slots but one); the HTTP routes read the store at once, so one principal's burst of
    // `GET …/events?limit=1000` (its budget allows 1,000 at once) ran as many reads of 1,000 events together.
    env = await startServer({ catchUpReadConcurrency: 4, catchUpReadsPerPrincipal: 1 });
    const task = await env.server.tasks.create({ owner: 'mallory', kind: 'k' });
    await task.progress({ done: 1 });
    const original = env.store.readEvents.bind(env.store);
    const released = gate();
    let inFlight = 0;
    let peak = 0;
    let started = 0;
    vi.spyOn(env.store, 'readEvents').mockImplementation(async (...args) => {
      started += 1;
      inFlight += 1;
      peak = Math.max(peak, inFlight);
      await released.promise;
      inFlight -= 1;
      return original(...args);
    });
    const getTask = vi.spyOn(env.store, 'getTask');
    const requests = Array.from({ length: 20 }, () =>
      fetch(`${env!.httpUrl}/progress/tasks/${task.id}/events?limit=1000`, {
        headers: { 'x-user': 'mallory' },
      }),
    );
    // Every request read its task (in turn too) before its events; wait until the reads can no longer
    // be still on their way, then see how many events reads run at once.
    await expect.poll(() => getTask.mock.calls.length, { timeout: 10_000 }).toBeGreaterThanOrEqual(3);
    await expect.poll(() => started).toBeGreaterThanOrEqual(3);
    await sleep(200);
    expect(peak).toBeLessThanOrEqual(3);
    released.open();
    const answers = await Promise.all(requests);
    expect(answers.map((answer) => answer.status)).toEqual(Array.from({ length: 20 }, () => 200));
    expect(started).toBe(20);
    expect(peak).toBeLessThanOrEqual(3);
  });

  it('answers 503 closed to requests whose reads still wait for their turn when the server shuts down', async () => {
    // The scheduler runs no queued read once closed: left to it, such a request was never answered.
    env = await startServer({ catchUpReadConcurrency: 2, catchUpReadsPerPrincipal: 1 });
    const task = await env.server.tasks.create({ owner: 'mallory', kind: 'k' });
    await task.progress({ done: 1 });
    const original = env.store.readEvents.bind(env.store);
    const released = gate();
    let started = 0;
    vi.spyOn(env.store, 'readEvents').mockImplementation(async (...args) => {
      started += 1;
      await released.promise;
      return original(...args);
    });
    const requests = Array.from({ length: 4 }, () =>
      fetch(`${env!.httpUrl}/progress/tasks/${task.id}/events`, { headers: { 'x-user': 'mallory' } }).then(
        async (response) => ({ status: response.status, body: await response.json() }),
      ),
    );
    await expect.poll(() => started).toBe(1);
    const closing = env.server.close({ timeoutMs: 2_000 });
    const answers = await Promise.all(requests);
    released.open();
    await closing;
    expect(answers).toEqual(
      Array.from({ length: 4 }, () => ({
        status: 503,
        body: { error: { code: 'closed', message: expect.any(String) } },
      })),
    );
  });
});

describe('PrincipalLimits', () => {
  it('names the bound a growth passed: its principal’s, or all principals’ together, and gives bytes back', () => {
    const limits = new PrincipalLimits({
      maxSockets: 10,
      maxSubscriptions: 10,
      ratePerSecond: 10,
      maxQueuedBytes: 600,
      maxQueuedBytesTotal: 1000,
      clock: Date.now,
    });
    expect(limits.addQueuedBytes('alice', 500)).toBeUndefined();
    expect(limits.addQueuedBytes('bob', 400)).toBeUndefined();
    // Bob is within his 600, all principals together are not.
    expect(limits.addQueuedBytes('bob', 200)).toBe('maxQueuedBytesTotal');
    expect(limits.addQueuedBytes('bob', -200)).toBeUndefined();
    expect(limits.addQueuedBytes('alice', 200)).toBe('maxQueuedBytesPerPrincipal');
    expect(limits.addQueuedBytes('alice', -200)).toBeUndefined();
    // A shrink is never refused, whatever is held.
    expect(limits.addQueuedBytes('alice', -100)).toBeUndefined();
    expect(limits.queuedBytesTotal).toBe(800);
    limits.addQueuedBytes('alice', -400);
    limits.addQueuedBytes('bob', -400);
    expect(limits.queuedBytesTotal).toBe(0);
    expect(limits.usage('alice').queuedBytes).toBe(0);
  });

  it('closes a socket while the clock throws, and gives its count back', () => {
    const limits = new PrincipalLimits({
      maxSockets: 1,
      maxSubscriptions: 1,
      ratePerSecond: 1,
      clock: () => {
        throw new Error('clock returned NaN');
      },
    });
    expect(limits.openSocket('alice')).toBe(true);
    // Until 7 December 2026 the sweep of refilled budgets that follows threw: an event stream's end,
    // from a timer, stopped there (an uncaught exception), its response never ended.
    expect(() => limits.closeSocket('alice')).not.toThrow();
    expect(limits.openSocket('alice')).toBe(true);
  });
});

describe('FairReads', () => {
  it('bounds reads per principal and overall, and serves principals in turn', async () => {
    const reads = new FairReads({ maxConcurrent: 3, maxPerPrincipal: 1 });
    const started: string[] = [];
    let inFlight = 0;
    let peak = 0;
    const slow = (name: string) => async () => {
      started.push(name);
      inFlight += 1;
      peak = Math.max(peak, inFlight);
      await new Promise((resolve) => setTimeout(resolve, 5));
      inFlight -= 1;
      return name;
    };
    const attacker = Array.from({ length: 50 }, (_, i) => reads.run('mallory', slow(`m${i}`)));
    const victim = reads.run('alice', slow('a0'));
    expect(await victim).toBe('a0');
    // The victim's read started in the first batch, not behind mallory's fifty.
    expect(started.indexOf('a0')).toBeLessThanOrEqual(1);
    await Promise.all(attacker);
    expect(peak).toBeLessThanOrEqual(2);
    reads.close();
  });

  it('lets a principal alone use the idle slots but one, and keeps it to its cap once another principal reads', async () => {
    const reads = new FairReads({ maxConcurrent: 4, maxPerPrincipal: 1 });
    const inFlight = new Map<string, number>();
    const peaks = new Map<string, number>();
    const gates: Array<() => void> = [];
    const gated = (who: string) => async () => {
      inFlight.set(who, (inFlight.get(who) ?? 0) + 1);
      peaks.set(who, Math.max(peaks.get(who) ?? 0, inFlight.get(who) ?? 0));
      await new Promise<void>((resolve) => gates.push(resolve));
      inFlight.set(who, (inFlight.get(who) ?? 0) - 1);
    };
    const turn = () => new Promise((resolve) => setImmediate(resolve));
    // One principal with a backlog (a failover's resubscribes) and nobody else: three reads at once.
    const backlog = Array.from({ length: 10 }, () => reads.run('chaos', gated('chaos')));
    for (let i = 0; i < 5; i++) await turn();
    expect(inFlight.get('chaos')).toBe(3);
    // Another principal arrives: its first read starts at once, in the slot left free.
    const other = reads.run('alice', gated('alice'));
    expect(inFlight.get('alice')).toBe(1);
    // From now on the first principal is held to its cap: as its reads end, none starts while it has one.
    for (const open of gates.splice(0, 3)) open();
    for (let i = 0; i < 5; i++) await turn();
    expect(inFlight.get('chaos')).toBe(1);
    while (gates.length > 0) {
      for (const open of gates.splice(0)) open();
      await turn();
      await turn();
    }
    await Promise.all([...backlog, other]);
    expect(peaks.get('chaos')).toBe(3);
    reads.close();
  });

  it('starts one read per principal per turn of the loop, so other I/O runs between them', async () => {
    const reads = new FairReads({ maxConcurrent: 100, maxPerPrincipal: 100 });
    const started: string[] = [];
    // Reads that resolve at once, like a synchronous store's (SQLite): the old time budget let a
    // principal run all of them, and what its caller did with each result, in one turn.
    const instant = (name: string) => () => {
      started.push(name);
      return Promise.resolve(name);
    };
    const all = Array.from({ length: 10 }, (_, i) => reads.run('mallory', instant(`m${i}`)));
    const victim = reads.run('alice', instant('a0'));
    const seenAtNextTurn = await new Promise<string[]>((resolve) =>
      setImmediate(() => resolve([...started])),
    );
    // This turn: mallory's first read and alice's; the turn after: at most one more of mallory's.
    expect(seenAtNextTurn).toContain('a0');
    expect(seenAtNextTurn.filter((name) => name.startsWith('m')).length).toBeLessThanOrEqual(2);
    expect(await Promise.all(all)).toHaveLength(10);
    expect(await victim).toBe('a0');
    reads.close();
  });

  it('serves every read, turn after turn, while the clock throws', async () => {
    let broken = false;
    const reads = new FairReads({
      maxConcurrent: 1,
      maxPerPrincipal: 1,
      clock: () => {
        if (broken) throw new Error('clock returned NaN');
        return 0;
      },
    });
    broken = true;
    // One read per turn of the loop (see above); each turn and each read asked while the slot is held
    // sweeps the queues, which reads the clock. Until 7 December 2026 its throw left the turn's callback (an
    // uncaught exception) with the reads behind the first never started, and failed the reads asked for
    // while the slot was held.
    const all = Array.from({ length: 3 }, (_, i) => reads.run('mallory', () => Promise.resolve(i)));
    expect(await Promise.all(all)).toEqual([0, 1, 2]);
    reads.close();
  });

  it('sweeps a long queue for superseded reads at most every STALE_SWEEP_INTERVAL_MS, and then answers them without their turn', async () => {
    let now = 0;
    const reads = new FairReads({ maxConcurrent: 4, maxPerPrincipal: 1, clock: () => now });
    const turn = () => new Promise((resolve) => setImmediate(resolve));
    // 1,000 reads of one principal (a reconnect storm), answered at once: one starts per turn of the loop.
    let staleChecks = 0;
    const superseded = new Set<number>();
    const ran: number[] = [];
    const queued = Array.from({ length: 1000 }, (_, i) =>
      reads.run(
        'storm',
        () => {
          if (superseded.has(i)) return Promise.resolve('stale');
          ran.push(i);
          return Promise.resolve(`read ${i}`);
        },
        () => {
          staleChecks += 1;
          return superseded.has(i);
        },
      ),
    );
    for (let i = 0; i < 5; i++) await turn();
    const started = ran.length;
    expect(started).toBeLessThan(20);
    // Reads far back in the queue are superseded; once the interval has passed, a turn answers them.
    for (let i = 900; i < 910; i++) superseded.add(i);
    now += STALE_SWEEP_INTERVAL_MS;
    await turn();
    await turn();
    expect(await Promise.all(queued.slice(900, 910))).toEqual(Array(10).fill('stale'));
    expect(ran.length).toBeLessThan(started + 5);
    // The rest drains one per turn while the clock stands still: the queue is not swept at every turn
    // (which asked each queued read about 500,000 times in all).
    staleChecks = 0;
    const results = await Promise.all(queued);
    expect(staleChecks).toBeLessThan(3000);
    expect(results.filter((r) => r === 'stale')).toHaveLength(10);
    expect(ran).toHaveLength(990);
    reads.close();
  });

  it('answers superseded reads, and forgets their principals, while every slot is held by reads that do not return', async () => {
    let now = 0;
    const reads = new FairReads({ maxConcurrent: 2, maxPerPrincipal: 1, clock: () => now });
    const turn = () => new Promise((resolve) => setImmediate(resolve));
    // Every slot taken by a read of a store that hangs (a Postgres connection cut without a reset: no
    // query timeout ends it).
    void reads.run('a', () => new Promise(() => {}));
    void reads.run('b', () => new Promise(() => {}));
    await turn();
    await turn();
    // Meanwhile the sockets of 1,000 principals subscribe and go away (a reconnect storm): each read
    // queued, then superseded. Each one holds its closed socket's state for as long as it is queued.
    let left = false;
    const superseded = Array.from({ length: 1000 }, (_, i) =>
      reads.run(
        `p${i}`,
        () => Promise.resolve(left ? 'stale' : 'read'),
        () => left,
      ),
    );
    expect(reads.queued).toBe(1000);
    left = true;
    now += STALE_SWEEP_INTERVAL_MS;
    // The next subscribe's read, still waiting for a slot, finds them answered without I/O.
    // Still queued when the scheduler closes below: refused `closed` then.
    const late = reads.run('late', () => Promise.resolve('late')).catch(() => 'refused');
    await turn();
    await turn();
    expect(reads.queued).toBe(1);
    // The two reading and the one waiting.
    expect(reads.principals).toBe(3);
    expect(await Promise.all(superseded)).toEqual(Array(1000).fill('stale'));
    reads.close();
    expect(await late).toBe('refused');
  });

  it('answers the reads still queued when it closes, and those asked for after, instead of leaving them waiting for ever', async () => {
    const reads = new FairReads({ maxConcurrent: 1, maxPerPrincipal: 1 });
    const turn = () => new Promise((resolve) => setImmediate(resolve));
    // The only slot held by a read of a store that hangs; behind it, a subscribe's load and a superseded one.
    let unhang: (value: string) => void = () => undefined;
    const inFlight = reads.run('a', () => new Promise<string>((resolve) => (unhang = resolve)));
    const ran: string[] = [];
    let left = false;
    const settled: Array<{ who: string; outcome: unknown }> = [];
    const track = (who: string, reading: Promise<unknown>) =>
      reading.then(
        (value) => settled.push({ who, outcome: value }),
        (error: unknown) => settled.push({ who, outcome: (error as { code?: unknown }).code }),
      );
    track(
      'waiting',
      reads.run('b', () => {
        ran.push('waiting');
        return Promise.resolve('read');
      }),
    );
    track(
      'superseded',
      reads.run(
        'c',
        () => Promise.resolve(left ? 'stale' : 'read'),
        () => left,
      ),
    );
    await turn();
    expect(reads.queued).toBe(2);
    left = true;
    reads.close();
    track(
      'late',
      reads.run('d', () => {
        ran.push('late');
        return Promise.resolve('read');
      }),
    );
    for (let i = 0; i < 3; i++) await turn();
    // None of them ran; each has its answer (before, the first two never settled).
    expect(settled).toEqual(
      expect.arrayContaining([
        { who: 'waiting', outcome: ErrorCode.Closed },
        { who: 'superseded', outcome: 'stale' },
        { who: 'late', outcome: ErrorCode.Closed },
      ]),
    );
    expect(settled).toHaveLength(3);
    expect(ran).toEqual([]);
    expect(reads.queued).toBe(0);
    // The read in flight settles as its store does, and its principal is forgotten then.
    expect(reads.principals).toBe(1);
    unhang('done');
    expect(await inFlight).toBe('done');
    await turn();
    expect(reads.principals).toBe(0);
  });
});
