/** Starting batches (and reruns of an old one): the running cap, the node locks, the audit record, the run. */

import { createHash, randomUUID } from 'node:crypto';
import type { ProgressStore } from '@finishline/core';
import type { Response } from 'express';
import type { CordonNote, NodeLock, TaskRecord } from '../app-db.js';
import type { Session } from '../auth.js';
import type { Cluster } from '../clusters.js';
import type { NodeView } from '../kube-nodes.js';
import { cordonNodes, drainNode, isDrained } from '../node-drain.js';
import { applyToNode, type NodeResult, sleep } from '../node-worker.js';
import {
  BadRequestError,
  describeOperation,
  OPERATION_KIND,
  type Operation,
  parseOperation,
  parseSelection,
  patchFor,
  someNames,
} from '../operations.js';
import { kubeFailure, type RouteContext } from './context.js';

/** A lock whose task is not in the store yet is in the way this long (the task is being created). */
const LOCK_CREATE_GRACE_MS = 30_000;
/**
 * A lock whose task was cancelled is in the way this long after the cancel unless its batch releases it
 * first: the batch may still be finishing a PATCH or an eviction it had sent (Kubernetes calls take no
 * signal), and it releases its locks once its workers have stopped. Only a batch whose replica died with
 * the cancel never does.
 */
const LOCK_CANCEL_GRACE_MS = 30_000;

/**
 * Whether a lock is in the way of a batch, given its task as the store has it (`undefined`: not there):
 * `held` by a running task (or one being created), `stopping` by a task cancelled a moment ago whose batch
 * may still be finishing a change it had sent, or `stale` (its task ended, or never got created), so the
 * lock may be taken over. The batch start and the node table both decide by it.
 */
export function lockState(
  lock: NodeLock,
  task: { status: string; finishedAt?: number | null | undefined } | undefined,
  now = Date.now(),
): 'held' | 'stopping' | 'stale' {
  if (task === undefined) return now - lock.acquiredAt > LOCK_CREATE_GRACE_MS ? 'stale' : 'held';
  if (task.status === 'running') return 'held';
  // Completed and failed are written by the batch once its workers stopped; interrupted by a stopping or
  // dead replica (taken over at once, so "Resume remaining" after a crash need not wait). A cancel is
  // written by whoever cancelled, while the batch may still be changing the node: taken over at once, a
  // batch started right after the cancel ran beside it (an uncordon read the node before the cordon's
  // PATCH landed, reported success, and the node ended cordoned).
  if (task.status === 'cancelled')
    return now - (task.finishedAt ?? lock.acquiredAt) > LOCK_CANCEL_GRACE_MS ? 'stale' : 'stopping';
  return 'stale';
}

/**
 * How long an `Idempotency-Key` of `POST /api/batch` answers with its batch: past it the key is free again
 * (and the app's hourly purge deletes it). A day, as common APIs keep theirs, is far past any client's retry.
 */
export const IDEMPOTENCY_KEY_TTL_MS = 24 * 3_600_000;

/** An `Idempotency-Key`: 1 to 255 visible ASCII characters (a UUID, a random token). */
const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/;

/** How often a batch cut off from the store asks it again before going on (see `storeReady`). */
const STORE_RETRY_MS = 1000;

/**
 * How long the answer of `GET /api/tasks/:id/unrecorded` is served again before the nodes are read anew:
 * the reads cost a node list and a drain's pod reads, so a caller repeating the request (or many callers)
 * must not cost them each time, while a node someone changes since shows within this.
 */
const UNRECORDED_CACHE_MS = 2000;

/** A batch start refused: the error answered. */
interface StartRefusal {
  ok: false;
  status: number;
  code: string;
  message: string;
  extra?: Record<string, unknown>;
  /** Sent as `Retry-After` (and `retryAfterS` in the error). */
  retryAfterS?: number;
}
type StartResult = { ok: true; taskId: string; description: string } | StartRefusal;

/** What the app's shutdown waits for. */
export interface BatchRuns {
  /** Resolves once every batch started here has ended and released its node locks. */
  settled(): Promise<void>;
}

export function registerBatchRoutes(ctx: RouteContext): BatchRuns {
  const { config, store, db, clusters, progress, fail, route, clusterOf } = ctx;
  // Each batch's run up to its unlock: the app's close waits for them before the database is closed, else
  // the unlock fails on a closed database and the locks stay behind.
  const runs = new Set<Promise<void>>();
  /** Whether a lock's task has ended (or never got created), so the lock may be taken over. */
  const lockIsStale = async (lock: NodeLock): Promise<boolean> =>
    lockState(lock, await store.getTask(lock.taskId)) === 'stale';

  // One batch start at a time per user in this process, so the running-batches cap cannot be raced by
  // requests sent back to back.
  const startQueues = new Map<string, Promise<unknown>>();
  const serialized = <T>(user: string, fn: () => Promise<T>): Promise<T> => {
    const previous = startQueues.get(user) ?? Promise.resolve();
    const next = previous.then(fn, fn);
    const settled = next.catch(() => undefined);
    startQueues.set(user, settled);
    void settled.then(() => {
      if (startQueues.get(user) === settled) startQueues.delete(user);
    });
    return next;
  };

  const tooManyBatches = (running: readonly { id: string }[]): StartRefusal => ({
    ok: false,
    status: 429,
    code: 'too_many_batches',
    message: `you already have ${running.length} batches running (at most ${config.maxRunningBatchesPerUser}); wait for one to finish`,
    extra: { running: running.map((t) => t.id) },
  });

  /** Checks the cap and the node locks, creates the task, records it and runs the batch in the background. */
  const startBatch = (
    session: Session,
    cluster: Cluster,
    op: Operation,
    names: string[],
    link: { parentTaskId: string; relation: 'retry_failed' | 'resume_remaining' } | null,
    reason: string | undefined,
    /** An `Idempotency-Key`'s start: its task id, and whether the key is still claimed for it (renewing it). */
    claim?: { taskId: string; held: () => Promise<boolean> },
  ): Promise<StartResult> =>
    serialized(session.username, async () => {
      const running = await store.listTasks({
        owner: session.username,
        statuses: ['running'],
        limit: config.maxRunningBatchesPerUser,
      });
      if (running.length >= config.maxRunningBatchesPerUser) return tooManyBatches(running);
      const taskId = claim?.taskId ?? randomUUID();
      let blocking: NodeLock[];
      try {
        blocking = await db.lockNodes(
          cluster.name,
          names,
          { taskId, username: session.username },
          lockIsStale,
        );
      } catch (error) {
        // The database failed under the locks (lockNodes tried again): no batch is in the way, so not a 409,
        // and nothing was started: the client may send the same request again. The last attempt may have
        // committed all the same (its answer lost with the connection): those locks, of a task that will
        // never exist, are released, else they kept the nodes from every batch for LOCK_CREATE_GRACE_MS.
        config.logger?.warn({ err: String(error), taskId }, 'node locks not taken');
        await db.unlockTask(taskId).catch(() => undefined);
        return {
          ok: false,
          status: 503,
          code: 'lock_unavailable',
          message: 'the node locks could not be taken; try again in a moment',
          retryAfterS: 1,
        };
      }
      if (blocking.length > 0) {
        const byTask = new Map<string, NodeLock[]>();
        for (const lock of blocking) {
          // Pushed, not copied: a copy per lock was 12.5 million copied entries for 5,000 locks.
          if (byTask.has(lock.taskId)) byTask.get(lock.taskId)?.push(lock);
          else byTask.set(lock.taskId, [lock]);
        }
        const parts = [...byTask].map(
          ([id, locks]) => `${someNames(locks.map((l) => l.node))} (task ${id} by ${locks[0]?.username})`,
        );
        return {
          ok: false,
          status: 409,
          code: 'nodes_locked',
          message: `another batch is changing ${parts.join('; ')}; wait for it to finish`,
          extra: { locks: blocking.map((l) => ({ node: l.node, taskId: l.taskId, username: l.username })) },
        };
      }
      // A rerun's "once per task", checked again under the node locks: the route's check is a read before
      // them, and two reruns sent at once (two tabs, the owner and an admin, two replicas) both read "none";
      // the locks stopped the second only while the first ran, so one read late started a second rerun once
      // the first had ended, applying the operation to the same nodes again. Two reruns of one task in one
      // mode lock the same nodes, and each records itself before it releases them: the one that locks second
      // finds the first recorded.
      if (link !== null) {
        let earlier: TaskRecord | undefined;
        try {
          earlier = (await db.reruns(link.parentTaskId, link.relation))[0];
        } catch (error) {
          await db.unlockTask(taskId).catch(() => undefined);
          throw error;
        }
        if (earlier !== undefined) {
          await db.unlockTask(taskId);
          return alreadyRerun(link.parentTaskId, link.relation, earlier);
        }
      }
      // The key still ours, checked last before the task exists: a request slower than the claim's grace (a
      // Kubernetes API answering in 29 s, a queue of starts) had its key taken over by a retry, which started
      // the batch; this one then starts nothing. Renewed by the check (see AppDb.renewIdempotencyKey): a
      // retry on another replica meanwhile finds a fresh claim, not one to take over.
      if (claim !== undefined) {
        let held: boolean;
        try {
          held = await claim.held();
        } catch (error) {
          await db.unlockTask(taskId).catch(() => undefined);
          throw error;
        }
        if (!held) {
          await db.unlockTask(taskId);
          return keyInUse();
        }
      }
      const description = describe(op, names);
      let task: Awaited<ReturnType<typeof progress.tasks.create>> | undefined;
      try {
        task = await progress.tasks.create({
          id: taskId,
          owner: session.username,
          kind: OPERATION_KIND[op.type],
          total: names.length,
          message: description,
        });
        // The cap again, now that this task is in the store. The check above runs before it exists and is
        // serialized per process only: two starts sent at once to two replicas both read the user's running
        // batches before either task existed, and both started (4 of at most 3). Of two starts counting
        // here, the later count sees both tasks, so at most the cap run; both may yield (then both say so).
        const runningNow = await store.listTasks({
          owner: session.username,
          statuses: ['running'],
          limit: config.maxRunningBatchesPerUser + 1,
        });
        if (runningNow.length > config.maxRunningBatchesPerUser) {
          await task
            .fail({ code: 'not_started', message: 'too many batches running' })
            .catch(() => undefined);
          await db.unlockTask(taskId).catch(() => undefined);
          return tooManyBatches(runningNow.filter((t) => t.id !== taskId));
        }
        await db.recordTask({
          taskId,
          cluster: cluster.name,
          username: session.username,
          operation: { ...op, ...(reason === undefined ? {} : { reason }) },
          nodes: names,
          parentTaskId: link?.parentTaskId ?? null,
          relation: link?.relation ?? null,
          createdAt: Date.now(),
        });
      } catch (error) {
        // A task created but never run would stay `running` for as long as this process renews its lease:
        // shown running everywhere and counted against the user's cap. It is ended before the 500.
        await task
          ?.fail({ code: 'not_started', message: 'the batch could not be recorded' })
          .catch(() => undefined);
        await db.unlockTask(taskId).catch(() => undefined);
        throw error;
      }
      // Before each change sent to Kubernetes (a PATCH, an eviction) and before a node's result is handed in:
      // the task still running in the store. A replica cut off from its database went on changing nodes it
      // could not record — a drain waits out budgets for minutes without writing anything — while the other
      // replicas reaped the task after its lease and let a new batch take its nodes; and a node done meanwhile
      // had its result refused, which stopped the batch and lost the result. It now waits until the store
      // answers (every STORE_RETRY_MS), then goes on; a task ended meanwhile (reaped, cancelled) stops it.
      let paused = false;
      const storeReady = async (signal: AbortSignal): Promise<void> => {
        for (;;) {
          signal.throwIfAborted();
          let current: Awaited<ReturnType<typeof store.getTask>>;
          try {
            current = await store.getTask(taskId);
          } catch (error) {
            if (!paused)
              config.logger?.warn({ err: String(error), taskId }, 'store unreachable: batch paused');
            paused = true;
            await sleep(STORE_RETRY_MS, signal);
            continue;
          }
          if (paused) config.logger?.info({ taskId }, 'store reachable again: batch goes on');
          paused = false;
          if (current?.status === 'running') return;
          throw new Error(
            `the task ended (${current?.status ?? 'deleted'}) while this server could not record its work`,
          );
        }
      };
      // A progress line is for display: one the store refused waits for the store, not fails the node.
      const show = async (current: string, signal: AbortSignal) => {
        try {
          await task.progress({ current });
        } catch {
          await storeReady(signal);
        }
      };
      // A drain batch cordons all its nodes first (see cordonNodes), once, in the first worker; every
      // worker waits for it before its node's evictions.
      let cordonedAll: ReturnType<typeof cordonNodes> | undefined;
      // The earlier notes this batch's intents replaced, by node, until the batch's cordon of the node lands
      // (see noteCordon); put back after the batch where it did not. (An intent that replaced none is shown
      // only if its cordon landed after all: see noteCordon.)
      const replacedNotes = new Map<string, CordonNote>();
      // The nodes this batch wrote an intent for: a PATCH sent again (a conflict, a timeout) writes it again,
      // and the note it replaces then is the batch's own.
      const intended = new Set<string>();
      // Written right before the cordon's PATCH (ApplyOptions.beforePatch), once the node was read and found
      // uncordoned: written earlier (before the batch's cordons, or before the node's read), a crash in
      // between left it in place of the note of a node cordoned already, which the batch never touched —
      // bob's "disk" read as alice's drain for good (no `finally` puts anything back after a kill -9).
      const noteIntent = async (name: string) => {
        if (!intended.has(name)) {
          intended.add(name);
          const earlier = await earlierNote(cluster.name, name);
          if (earlier !== undefined) replacedNotes.set(name, earlier);
        }
        await noteCordon(cluster.name, op, name, session.username, reason);
      };
      // Only by the batch that cordoned the node: one found cordoned already (by bob, "for the disk") wrote
      // its note over bob's, and the node read as alice's to uncordon once her update was done. (Its intent,
      // if a PATCH of it was sent before a re-read found it cordoned, is put back after the batch.)
      const noteCordoned = async (name: string, cordon: NodeResult) => {
        if (cordon.outcome !== 'changed') return;
        replacedNotes.delete(name);
        await noteCordon(cluster.name, op, name, session.username, reason);
      };
      const cordonAll = (signal: AbortSignal) => {
        cordonedAll ??= show(`cordoning ${names.length} nodes`, signal).then(() =>
          cordonNodes(cluster.nodes, names, {
            concurrency: config.concurrency,
            maxAttempts: config.maxAttempts,
            signal,
            beforeCordon: async (name) => {
              await storeReady(signal);
              await noteIntent(name);
            },
            onCordoned: noteCordoned,
          }),
        );
        return cordonedAll;
      };
      const work = async (name: string, signal: AbortSignal) => {
        const cordoned = op.type === 'drain' ? await cordonAll(signal) : undefined;
        await show(name, signal);
        const result =
          op.type === 'drain'
            ? await drainNode(cluster.nodes, name, {
                maxAttempts: config.maxAttempts,
                signal,
                cordoned: cordoned?.has(name) === true,
                beforePatch: async () => {
                  await storeReady(signal);
                  await noteIntent(name);
                },
                beforeEvict: () => storeReady(signal),
                // Noted at once: a drain that fails afterwards leaves the node cordoned, by this batch.
                onCordoned: (cordon) => noteCordoned(name, cordon),
                ...(config.evictionTimeoutMs === undefined
                  ? {}
                  : { evictionTimeoutMs: config.evictionTimeoutMs }),
                ...(config.evictionRetryMs === undefined ? {} : { evictionRetryMs: config.evictionRetryMs }),
                // Each node's evictions show inside its item's progress: "worker-3: evicted 2 of 5 pods".
                onProgress: (evicted, total) => show(`${name}: evicted ${evicted} of ${total} pods`, signal),
              })
            : await applyToNode(cluster.nodes, name, op, {
                maxAttempts: config.maxAttempts,
                signal,
                // The note before the PATCH (see noteCordon), confirmed (its time) after it.
                beforePatch: async () => {
                  await storeReady(signal);
                  if (op.type === 'cordon') await noteIntent(name);
                },
              });
        // Noted and handed in once the store can take them (see storeReady).
        await storeReady(signal);
        if (op.type === 'cordon') await noteCordoned(name, result);
        else if (op.type !== 'drain') await noteCordon(cluster.name, op, name, session.username, reason);
        // Cordoned by this batch before its turn: its own cordon found it done already.
        if (cordoned?.get(name)?.outcome === 'changed') result.outcome = 'changed';
        return { ...result };
      };
      const run = task
        .runBatch(
          names,
          (name, { signal }) =>
            work(name, signal).catch(async (error: unknown) => {
              // A failed node's reason, too, is handed in once the store can take it (see storeReady).
              if (!signal.aborted) await storeReady(signal);
              throw error;
            }),
          { concurrency: config.concurrency, key: (name) => name },
        )
        .catch((error: unknown) => config.logger?.error({ err: String(error), taskId }, 'batch failed'))
        .finally(async () => {
          // The nodes whose cordon by this batch never landed (it failed, or the batch ended first) get back
          // the note its intent replaced, before their locks go: a failed cordon of a node cordoned earlier
          // showed the failed one's user and reason on it.
          for (const note of replacedNotes.values()) await restoreNote(note);
          await db
            .unlockTask(taskId)
            .catch((error: unknown) => config.logger?.warn({ err: String(error), taskId }, 'unlock failed'));
        })
        .then(() => {
          runs.delete(run);
        });
      runs.add(run);
      return { ok: true, taskId, description };
    });

  /**
   * Who cordoned a node and why, kept beside the node (the API has no field for it). A cordon's note is
   * written right before its PATCH (an intent) and again after it: written only after, a PATCH landing just
   * before a crash left the node cordoned with no note. An intent whose PATCH failed is not shown: the node list
   * shows a note only while the node is unschedulable by this app's field manager (node-routes.ts).
   */
  const noteCordon = async (
    cluster: string,
    op: Operation,
    node: string,
    username: string,
    reason: string | undefined,
  ) => {
    try {
      if (op.type === 'cordon' || op.type === 'drain') {
        await db.setCordon({ cluster, node, reason: reason ?? '', username, at: Date.now() });
      } else if (op.type === 'uncordon') await db.clearCordon(cluster, node);
    } catch (error) {
      // The node is cordoned all the same; only the note is missing.
      config.logger?.warn({ err: String(error), node }, 'cordon note not saved');
    }
  };

  /** The note of `node` now, if any (none when it cannot be read: then there is nothing to put back). */
  const earlierNote = async (cluster: string, node: string): Promise<CordonNote | undefined> => {
    try {
      return (await db.cordons(cluster)).find((note) => note.node === node);
    } catch (error) {
      config.logger?.warn({ err: String(error), node }, 'cordon note not read');
      return undefined;
    }
  };

  /** Puts back a note a cordon's intent replaced. */
  const restoreNote = async (note: CordonNote) => {
    try {
      await db.setCordon(note);
    } catch (error) {
      config.logger?.warn({ err: String(error), node: note.node }, 'cordon note not restored');
    }
  };

  /** `skipped`: a rerun's nodes deleted from the cluster since its old batch (see startChecked). */
  const answerStart = (
    res: Response,
    op: Operation,
    names: string[],
    started: StartResult,
    skipped?: string[],
  ) => {
    if (!started.ok) {
      const { retryAfterS } = started;
      if (retryAfterS !== undefined) res.setHeader('retry-after', String(retryAfterS));
      return fail(res, started.status, started.code, started.message, {
        ...started.extra,
        ...(retryAfterS === undefined ? {} : { retryAfterS }),
      });
    }
    res.status(202).json({
      taskId: started.taskId,
      kind: OPERATION_KIND[op.type],
      description: started.description,
      nodes: names,
      ...(skipped === undefined ? {} : { skipped }),
    });
  };

  /**
   * What a batch start's `Idempotency-Key` says, claiming it when it is free: `claimed` (go on, with
   * `taskId`), `replay` (its batch started: answer with it again), `mismatch` (the key came with another
   * request), `busy` (its first request is still being answered).
   */
  const claimKey = async (
    username: string,
    key: string,
    fingerprint: string,
  ): Promise<{ kind: 'claimed' | 'replay' | 'mismatch' | 'busy'; taskId: string }> => {
    const claim = { username, key, fingerprint, taskId: randomUUID(), createdAt: Date.now() };
    const stored = await db.claimIdempotencyKey(claim);
    if (stored.taskId === claim.taskId) return { kind: 'claimed', taskId: claim.taskId };
    const age = claim.createdAt - stored.createdAt;
    // A batch started under the key: its record is written right after its task is created, and kept
    // after retention deleted the task.
    const started = (await db.task(stored.taskId)) !== undefined;
    if (age < IDEMPOTENCY_KEY_TTL_MS && (started || age < LOCK_CREATE_GRACE_MS)) {
      if (stored.fingerprint !== fingerprint) return { kind: 'mismatch', taskId: stored.taskId };
      return { kind: started ? 'replay' : 'busy', taskId: stored.taskId };
    }
    // Expired, or its request never started a batch and did not free the key (its replica died meanwhile):
    // taken over, by one of the requests doing so at once.
    return (await db.takeOverIdempotencyKey(stored, claim))
      ? { kind: 'claimed', taskId: claim.taskId }
      : { kind: 'busy', taskId: stored.taskId };
  };

  route('post', '/api/batch', { role: 'operator' }, async (req, res, session) => {
    // Optional: the same key again (a retry after a lost answer) answers the batch it started, once.
    const key = req.get('idempotency-key');
    if (key !== undefined && !IDEMPOTENCY_KEY.test(key)) {
      return fail(res, 400, 'invalid_input', 'Idempotency-Key must be 1 to 255 visible ASCII characters', {
        field: 'Idempotency-Key',
      });
    }
    const cluster = clusterOf(res, (req.body as { cluster?: unknown } | undefined)?.cluster);
    if (cluster === undefined) return;
    let op: Operation;
    let names: string[];
    let reason: string | undefined;
    try {
      op = parseOperation(req.body);
      names = parseSelection((req.body as { nodes?: unknown }).nodes, config.maxNodesPerBatch);
      reason = parseReason((req.body as { reason?: unknown }).reason);
    } catch (error) {
      if (error instanceof BadRequestError)
        return fail(res, 400, 'invalid_input', error.message, { field: error.field });
      throw error;
    }
    if (key === undefined) return startChecked(res, session, cluster, op, names, null, reason, undefined);
    const fingerprint = createHash('sha256')
      .update(JSON.stringify([cluster.name, op, names, reason ?? null]))
      .digest('hex');
    const claimed = await claimKey(session.username, key, fingerprint);
    if (claimed.kind === 'mismatch') {
      return fail(
        res,
        422,
        'idempotency_key_reused',
        'this Idempotency-Key was sent with another request; use a new key for a new batch',
        { taskId: claimed.taskId },
      );
    }
    if (claimed.kind === 'busy') return answerStart(res, op, names, keyInUse());
    if (claimed.kind === 'replay') {
      res.setHeader('idempotent-replayed', 'true');
      return answerStart(res, op, names, {
        ok: true,
        taskId: claimed.taskId,
        description: describe(op, names),
      });
    }
    let started = false;
    try {
      started = await startChecked(res, session, cluster, op, names, null, reason, {
        taskId: claimed.taskId,
        held: () => db.renewIdempotencyKey(session.username, key, claimed.taskId, Date.now()),
      });
    } finally {
      // Refused or failed: nothing started, and the same key may try again at once.
      if (!started) {
        await db
          .releaseIdempotencyKey(session.username, key, claimed.taskId)
          .catch((error: unknown) =>
            config.logger?.warn({ err: String(error) }, 'idempotency key not released'),
          );
      }
    }
  });

  /**
   * Checks the nodes exist, then starts the batch and answers; whether it started. A new batch naming a node
   * the cluster does not have is refused (`400 unknown_nodes`: a typo, a stale page). A rerun's nodes are the
   * old batch's, and one deleted since (scaled down, replaced) is skipped: it runs on the others, and its
   * answer names the skipped ones (`skipped`). Refused, as it was until 7 December 2026, one deleted node
   * kept the rerun from every other node, and the user had to find them in the node table; run, it failed
   * again, "404 NotFound: nodes … not found", in a new task.
   */
  const startChecked = async (
    res: Response,
    session: Session,
    cluster: Cluster,
    op: Operation,
    names: string[],
    link: Parameters<typeof startBatch>[4],
    reason: string | undefined,
    claim: Parameters<typeof startBatch>[6],
  ): Promise<boolean> => {
    let known: Set<string>;
    try {
      known = new Set((await cluster.nodes.list()).map((n) => n.name));
    } catch (error) {
      kubeFailure(res, error, config.logger);
      return false;
    }
    const unknown = names.filter((n) => !known.has(n));
    if (unknown.length > 0 && link === null) {
      fail(res, 400, 'unknown_nodes', `unknown node${unknown.length > 1 ? 's' : ''}: ${someNames(unknown)}`, {
        field: 'nodes',
        nodes: unknown,
      });
      return false;
    }
    if (unknown.length === names.length) {
      fail(
        res,
        400,
        'nothing_to_rerun',
        `${unknown.length === 1 ? 'the node to rerun no longer exists' : 'none of the nodes to rerun exists any more'} in the cluster: ${someNames(unknown)}`,
        { nodes: unknown },
      );
      return false;
    }
    const existing = unknown.length === 0 ? names : names.filter((n) => known.has(n));
    const started = await startBatch(session, cluster, op, existing, link, reason, claim);
    answerStart(res, op, existing, started, link === null ? undefined : unknown);
    return started.ok;
  };

  // "Retry failed" / "resume remaining": a new task on the failed nodes, or on the nodes the old task never
  // finished (an interrupted or cancelled batch), linked to the old one.
  route('post', '/api/tasks/:id/rerun', { role: 'operator' }, async (req, res, session) => {
    const mode = (req.body as { mode?: unknown }).mode;
    if (mode !== 'retry_failed' && mode !== 'resume_remaining') {
      return fail(res, 400, 'invalid_input', 'mode must be retry_failed or resume_remaining', {
        field: 'mode',
      });
    }
    const id = String(req.params.id);
    const [record, task] = await Promise.all([db.task(id), store.getTask(id)]);
    if (
      record === undefined ||
      task === undefined ||
      (task.owner !== session.username && req.role !== 'admin')
    ) {
      return fail(res, 404, 'task_not_found', 'no such task');
    }
    if (task.status === 'running') return fail(res, 409, 'task_running', 'the task is still running');
    // The old task's cluster, which this server may no longer manage (its kubeconfig changed).
    const cluster = clusters.resolve(record.cluster);
    if (cluster === undefined) {
      return fail(res, 409, 'unknown_cluster', `this server no longer manages cluster ${record.cluster}`);
    }
    // One rerun of each kind per task: a second "Retry failed" (another tab, another user, a click again
    // after a proxy's 502 hid the first answer) applied the operation to the same nodes again once the
    // first rerun had ended, undoing whatever was changed on them since. What the rerun left is rerun
    // from that task.
    // (Checked again under the node locks, see startBatch: two reruns sent at once both read none here.)
    const earlier = (await db.reruns(id, mode))[0];
    if (earlier !== undefined) {
      const refused = alreadyRerun(id, mode, earlier);
      return fail(res, refused.status, refused.code, refused.message, refused.extra);
    }
    const outcome = await itemOutcomes(store, id);
    const names =
      mode === 'retry_failed'
        ? record.nodes.filter((n) => outcome.get(n) === false)
        : record.nodes.filter((n) => !outcome.has(n));
    if (names.length === 0) {
      return fail(
        res,
        400,
        'nothing_to_rerun',
        mode === 'retry_failed' ? 'no node failed in that task' : 'every node of that task was processed',
      );
    }
    let op: Operation;
    try {
      // Validated again: the record is data from the database, and the rules may have changed since.
      const { type, ...fields } = record.operation;
      op = parseOperation({ ...fields, operation: type });
    } catch {
      return fail(res, 400, 'invalid_input', 'the old task’s operation cannot be rerun');
    }
    const reason = typeof record.operation.reason === 'string' ? record.operation.reason : undefined;
    await startChecked(
      res,
      session,
      cluster,
      op,
      names,
      { parentTaskId: id, relation: mode },
      reason,
      undefined,
    );
  });

  // What a task's unrecorded nodes cost: a full node list and, for a drain, pod reads, so any signed-in
  // viewer could make the server hammer the Kubernetes API by repeating a cheap GET. One computation per
  // task runs at a time, shared by every caller meanwhile, and its answer is served for a moment after
  // (the task has ended, only other hands change its nodes): N callers cost one computation, not N.
  interface Unrecorded {
    nodes: Promise<{ name: string; changed: boolean | null; gone?: true }[]>;
    /** Callers still waiting; the reads are given up once every one of them has gone. */
    waiting: number;
    abort: AbortController;
    /** When the answer came (Date.now()), served until UNRECORDED_CACHE_MS after. */
    doneAt?: number;
  }
  const unrecorded = new Map<string, Unrecorded>();
  // The node list is shared by every task's computation too, per cluster: cached per task only, a caller
  // asking for many ended tasks in turn cost a full node list each. Served for the same moment after.
  const nodeLists = new Map<Cluster, { nodes: Promise<NodeView[]>; doneAt?: number }>();
  const listNodes = (cluster: Cluster): Promise<NodeView[]> => {
    const cached = nodeLists.get(cluster);
    if (
      cached !== undefined &&
      (cached.doneAt === undefined || Date.now() - cached.doneAt < UNRECORDED_CACHE_MS)
    )
      return cached.nodes;
    const created: { nodes: Promise<NodeView[]>; doneAt?: number } = { nodes: cluster.nodes.list() };
    created.nodes.then(
      () => {
        created.doneAt = Date.now();
      },
      () => {
        if (nodeLists.get(cluster) === created) nodeLists.delete(cluster); // a failure is not kept
      },
    );
    nodeLists.set(cluster, created);
    return created.nodes;
  };
  // A drain's pod reads too are bounded across tasks: `concurrency` nodes at a time in all, not per task (a
  // caller asking for many drains at once had each read `concurrency` nodes' pods beside the others). A
  // freed slot is handed to the next reader directly.
  let podReadsRunning = 0;
  const podReadWaiters: (() => void)[] = [];
  const withPodReadSlot = async <T>(read: () => Promise<T>): Promise<T> => {
    if (podReadsRunning < config.concurrency) podReadsRunning++;
    else await new Promise<void>((resolve) => podReadWaiters.push(resolve));
    try {
      return await read();
    } finally {
      const next = podReadWaiters.shift();
      if (next === undefined) podReadsRunning--;
      else next();
    }
  };
  const computeUnrecorded = async (record: TaskRecord, id: string, signal: AbortSignal) => {
    const outcome = await itemOutcomes(store, id);
    const names = record.nodes.filter((n) => !outcome.has(n));
    const cluster = clusters.resolve(record.cluster);
    let op: Operation | undefined;
    try {
      const { type, ...fields } = record.operation;
      op = parseOperation({ ...fields, operation: type });
    } catch {
      op = undefined;
    }
    const now = new Date();
    // One list for the batch (up to maxNodesPerBatch nodes), not one read per node.
    let current: Map<string, NodeView> | undefined;
    if (names.length > 0 && op !== undefined && cluster !== undefined) {
      try {
        current = new Map((await listNodes(cluster)).map((n) => [n.name, n]));
      } catch {
        current = undefined; // unknown, said so per node
      }
    }
    const nodes = names.map((name): { name: string; changed: boolean | null; gone?: true } => {
      const node = current?.get(name);
      // Not in the list read: deleted since (scaled down, replaced). Said so, not "could not be read back",
      // which asks the user to verify a node that no longer exists.
      if (current !== undefined && node === undefined) return { name, changed: null, gone: true };
      return {
        name,
        changed: op === undefined || node === undefined ? null : patchFor(op, node, now) === null,
      };
    });
    if (op?.type === 'drain' && cluster !== undefined) {
      // A cordoned node may still hold pods to evict: its pods are read, a few nodes at a time, the reads
      // given up once every caller has gone.
      const cordoned = nodes.filter((n) => n.changed === true);
      let next = 0;
      const lane = async () => {
        for (let i = next++; i < cordoned.length; i = next++) {
          const entry = cordoned[i] as (typeof nodes)[number];
          try {
            entry.changed = await withPodReadSlot(() =>
              isDrained(
                cluster.nodes,
                { name: entry.name, unschedulable: true },
                { maxAttempts: config.maxAttempts, signal },
              ),
            );
          } catch {
            entry.changed = null; // cordoned, its pods unknown
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(config.concurrency, cordoned.length) }, lane));
    }
    return nodes;
  };

  // The nodes of an ended task without a recorded result, and whether each is now as the operation wants.
  // Such a node was not necessarily left unchanged: a batch whose server died (interrupted) may have
  // patched it just before, its result never recorded; the dialog said "not changed" all the same.
  // `changed`: true when the node already has the change, false when it has not, null when unknown (the
  // node could not be read, or is gone: `gone: true`, no longer in the cluster). A drain's change is read by the drain's own rules (isDrained): cordoned, and no
  // pod left that the drain would evict.
  route('get', '/api/tasks/:id/unrecorded', {}, async (req, res, session) => {
    const id = String(req.params.id);
    const [record, task] = await Promise.all([db.task(id), store.getTask(id)]);
    // A task deleted by retention keeps its record (the audit page): it is no more, not running.
    if (
      record === undefined ||
      task === undefined ||
      (req.role === 'operator' && record.username !== session.username)
    ) {
      return fail(res, 404, 'task_not_found', 'no such task');
    }
    if (task.status === 'running') return fail(res, 409, 'task_running', 'the task is still running');
    // A cancel is written at once, while the batch may still be finishing a PATCH or an eviction it had sent
    // (see LOCK_CANCEL_GRACE_MS): nodes read back then were called "not changed" — and the answer kept — though
    // the change landed a moment later, never recorded by the cancelled batch. Read once it let go of its
    // nodes (or after the grace: its replica died with the cancel).
    if (
      task.status === 'cancelled' &&
      Date.now() - (task.finishedAt ?? 0) <= LOCK_CANCEL_GRACE_MS &&
      (await db.locks(record.cluster, record.nodes)).some((lock) => lock.taskId === id)
    ) {
      res.setHeader('retry-after', '1');
      return fail(
        res,
        409,
        'task_stopping',
        'the cancelled batch is still finishing the changes it had sent; try again in a moment',
        { retryAfterS: 1 },
      );
    }
    const at = Date.now();
    for (const [key, entry] of unrecorded) {
      // Swept here rather than by a timer: nothing is left behind when the app closes.
      if (entry.doneAt !== undefined && at - entry.doneAt >= UNRECORDED_CACHE_MS) unrecorded.delete(key);
    }
    let entry = unrecorded.get(id);
    if (entry === undefined || entry.abort.signal.aborted) {
      const abort = new AbortController();
      const created: Unrecorded = { nodes: computeUnrecorded(record, id, abort.signal), waiting: 0, abort };
      created.nodes.then(
        () => {
          created.doneAt = Date.now();
        },
        () => {
          if (unrecorded.get(id) === created) unrecorded.delete(id); // a failure is not kept
        },
      );
      unrecorded.set(id, created);
      entry = created;
    }
    const shared = entry;
    shared.waiting++;
    let left = false;
    res.on('close', () => {
      if (left) return;
      left = true;
      shared.waiting--;
      if (shared.waiting === 0 && shared.doneAt === undefined) {
        shared.abort.abort();
        if (unrecorded.get(id) === shared) unrecorded.delete(id); // the next caller starts afresh
      }
    });
    let nodes: Awaited<Unrecorded['nodes']>;
    try {
      nodes = await shared.nodes;
    } finally {
      if (!left) {
        left = true;
        shared.waiting--;
      }
    }
    if (res.destroyed || res.writableEnded) return;
    res.json({ nodes });
  });

  return { settled: () => Promise.all(runs).then(() => undefined) };
}

/** The answer to a request whose `Idempotency-Key` another request with it is using. */
function keyInUse(): StartRefusal {
  return {
    ok: false,
    status: 409,
    code: 'idempotency_key_in_use',
    message: 'another request with this Idempotency-Key is being answered; try again in a moment',
    retryAfterS: 1,
  };
}

/** A batch's description, its task's message. */
function describe(op: Operation, names: readonly string[]): string {
  return `${describeOperation(op)} on ${names.length} node${names.length > 1 ? 's' : ''}`;
}

/** The refusal of a second rerun of a task in one mode, naming the rerun to rerun instead. */
function alreadyRerun(
  parentTaskId: string,
  mode: 'retry_failed' | 'resume_remaining',
  earlier: TaskRecord,
): { ok: false; status: number; code: string; message: string; extra: Record<string, unknown> } {
  return {
    ok: false,
    status: 409,
    code: 'already_rerun',
    message: `task ${parentTaskId} was already ${mode === 'retry_failed' ? 'retried' : 'resumed'} by ${earlier.username} as task ${earlier.taskId}; rerun that task instead`,
    extra: { taskId: earlier.taskId },
  };
}

/** A UTF-16 surrogate without its pair. */
const UNPAIRED_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * The optional free-text reason of a cordon (shown per node). Refused with U+0000, which Postgres cannot
 * store in text: the batch was started all the same, cordoning its nodes, and every note of it failed to
 * save ("cordon note not saved" in the log only), so the nodes showed no one's reason.
 */
function parseReason(value: unknown): string | undefined {
  if (value === undefined || value === null || value === '') return undefined;
  if (typeof value !== 'string') throw new BadRequestError('reason', 'reason must be a string');
  if (value.length > 500) throw new BadRequestError('reason', 'reason must be at most 500 characters');
  if (value.includes('\u0000')) throw new BadRequestError('reason', 'reason must not contain U+0000');
  // Neither database keeps one: their drivers encode it as U+FFFD, and the note read back was not the one sent.
  if (UNPAIRED_SURROGATE.test(value))
    throw new BadRequestError('reason', 'reason must not contain an unpaired surrogate (invalid UTF-16)');
  return value;
}

/** Each finished node of a task: `true` succeeded, `false` failed; absent: never finished. */
async function itemOutcomes(store: ProgressStore, taskId: string): Promise<Map<string, boolean>> {
  const outcome = new Map<string, boolean>();
  for (let after = 0; ; ) {
    const events = await store.readEvents(taskId, after, 1000);
    for (const event of events) if (event.type === 'item') outcome.set(event.item.key, event.item.ok);
    if (events.length < 1000) break;
    after = events[events.length - 1]?.seq ?? after;
  }
  return outcome;
}
