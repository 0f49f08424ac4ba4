import { KubeApiError, type KubeNodes, type PodRef } from './kube-nodes.js';
import { applyToNode, type NodeResult, readRetrying, retryWaitMs, sleep } from './node-worker.js';

// The drain's polling wait lives beside the node worker's retry wait; importers of this module keep it.
export { sleep };

/** Options of {@link drainNode}. */
export interface DrainOptions {
  maxAttempts: number;
  signal: AbortSignal;
  /** Called right before the node's cordon PATCH is sent (see `ApplyOptions.beforePatch`). */
  beforePatch?: () => void | Promise<void>;
  /** Called right before each eviction is sent (every attempt); a rejection fails the pod as the eviction's would. */
  beforeEvict?: () => void | Promise<void>;
  /**
   * Whether the node was cordoned already by this drain's batch (see {@link cordonNodes}): its own cordon
   * failing (its read) leaves it cordoned all the same, and its reason says so.
   * @default false
   */
  cordoned?: boolean;
  /**
   * Called once the node is cordoned, before its pods are looked at (a drain failing later leaves it so),
   * with the cordon's result: `unchanged` when it was cordoned already.
   */
  onCordoned?: (cordon: NodeResult) => void | Promise<void>;
  /** Called as pods go: `evicted` of `total` pods gone. */
  onProgress?: (evicted: number, total: number) => void | Promise<void>;
  /**
   * How long one pod may stay protected by its PodDisruptionBudget (429) before the node fails; and, once
   * its eviction is accepted, how long it may take to terminate (grace period, finalizers) before the node fails.
   * @default 120000
   */
  evictionTimeoutMs?: number;
  /**
   * Pause between eviction attempts refused by a budget (429) that sends no `Retry-After`: kubectl drain's
   * 5 s. A refusal with `Retry-After` waits that long instead (at most 30 s).
   * @default 5000
   */
  evictionRetryMs?: number;
  /**
   * Pause between checks that an evicted pod is gone.
   * @default 500
   */
  pollMs?: number;
}

/** What a drained node reports as its item `detail`. */
export interface DrainResult extends NodeResult {
  /** `namespace/name` of each evicted pod. */
  evicted: string[];
  /**
   * DaemonSet and mirror pods left in place (a drain never evicts them, as `kubectl drain --ignore-daemonsets`):
   * the running pods of DaemonSets that exist.
   */
  skipped: string[];
}

/**
 * Cordons every node of a drain batch before any of them is drained, as `kubectl drain` does with several
 * nodes: cordoning each only when its turn came let the pods evicted from the first nodes be scheduled onto
 * the nodes not reached yet, and evicted again from there. `concurrency` nodes at a time; stops starting
 * new ones once `signal` aborts. A node whose cordon fails is left out of the answer: its own drain
 * cordons it again and fails with the reason. Calls `onCordoned` for each node cordoned.
 */
export async function cordonNodes(
  nodes: KubeNodes,
  names: readonly string[],
  options: {
    concurrency: number;
    maxAttempts: number;
    signal: AbortSignal;
    /** Called right before a node's cordon PATCH is sent (see `ApplyOptions.beforePatch`). */
    beforeCordon?: (name: string) => void | Promise<void>;
    /** Called for each node found cordoned, with the cordon's result (`unchanged`: cordoned already). */
    onCordoned?: (name: string, cordon: NodeResult) => void | Promise<void>;
  },
): Promise<Map<string, NodeResult>> {
  const cordoned = new Map<string, NodeResult>();
  let next = 0;
  const lane = async () => {
    for (let i = next++; i < names.length && !options.signal.aborted; i = next++) {
      const name = names[i] as string;
      let result: NodeResult;
      try {
        result = await applyToNode(
          nodes,
          name,
          { type: 'drain' },
          {
            maxAttempts: options.maxAttempts,
            signal: options.signal,
            ...(options.beforeCordon === undefined
              ? {}
              : { beforePatch: () => options.beforeCordon?.(name) }),
          },
        );
      } catch {
        continue; // its own drain reports it
      }
      cordoned.set(name, result);
      await options.onCordoned?.(name, result);
    }
  };
  await Promise.all(Array.from({ length: Math.min(options.concurrency, names.length) }, lane));
  return cordoned;
}

/**
 * Drains one node as `kubectl drain --ignore-daemonsets` does: cordons it, refuses (fails the node) if a
 * running pod has no controller or has an emptyDir volume, or belongs to a DaemonSet that no longer exists (or cannot be read), then evicts every pod that is not a
 * running pod of an existing DaemonSet or a mirror pod through the
 * Eviction API — retrying while a PodDisruptionBudget refuses
 * (429), and sending again one that timed out, with the listed pod's uid as precondition — and waits until
 * each evicted pod is gone. Its pod list and pod reads, shed under load (429 or
 * 5xx with `Retry-After`), are retried as a patch is. Throws with the reason shown for a failed node.
 */
export async function drainNode(nodes: KubeNodes, name: string, options: DrainOptions): Promise<DrainResult> {
  const pollMs = options.pollMs ?? 500;
  const evictionRetryMs = options.evictionRetryMs ?? 5000;
  const timeoutMs = options.evictionTimeoutMs ?? 120_000;
  let cordon: NodeResult;
  try {
    cordon = await applyToNode(nodes, name, { type: 'drain' }, options);
  } catch (error) {
    if (options.signal.aborted || options.cordoned !== true) throw error;
    throw new Error(`${(error as Error).message}; ${leftState(name, [])}`);
  }
  await options.onCordoned?.(cordon);
  // The pods whose eviction the API accepted (or found gone): going, whatever fails afterwards.
  const sent: string[] = [];
  let podCount: number | undefined;
  try {
    return await drainCordoned();
  } catch (error) {
    // A drain failing past its cordon leaves the node changed: cordoned, and maybe some of its pods evicted
    // (another pod's eviction landing as one failed). The reason said only what failed, and the page
    // "could not be changed": the operator was not told the node was left cordoned and half drained.
    if (options.signal.aborted) throw error;
    throw new Error(`${(error as Error).message}; ${leftState(name, sent, podCount)}`);
  }

  async function drainCordoned(): Promise<DrainResult> {
    let pods: PodRef[];
    try {
      pods = await readRetrying(() => nodes.podsOn(name), options);
    } catch (error) {
      throw new Error(`listing the pods of ${name}: ${(error as Error).message}`);
    }
    const { skipped, movable, ownerless } = await sortPods(nodes, name, pods, options);
    // One already being deleted loses nothing more: it is waited for as an evicted one is.
    const orphaned = [...ownerless].filter((p) => !p.terminating);
    if (orphaned.length > 0) {
      const list = someOf(
        orphaned.map((p) => `${p.namespace}/${p.name} (DaemonSet ${p.namespace}/${p.controllerName ?? ''})`),
      );
      throw new Error(
        `cannot drain ${name}: ${list} ${orphaned.length > 1 ? 'belong' : 'belongs'} to a DaemonSet that no longer exists and would not be recreated (kubectl drain refuses it without --force); delete ${orphaned.length > 1 ? 'them' : 'it'}, then retry`,
      );
    }
    // A running pod that no controller recreates would be gone for good: kubectl drain refuses the node without
    // --force, leaving it cordoned, and so does this, before any eviction.
    // (One already finished, or already being deleted, loses nothing more.)
    const unmanaged = movable.filter((p) => p.controller === null && !p.finished && !p.terminating);
    if (unmanaged.length > 0) {
      const names = someOf(unmanaged.map((p) => `${p.namespace}/${p.name}`));
      throw new Error(
        `cannot drain ${name}: ${names} ${unmanaged.length > 1 ? 'declare' : 'declares'} no controller and would not be recreated (kubectl drain refuses it without --force); move or delete ${unmanaged.length > 1 ? 'them' : 'it'}, then retry`,
      );
    }
    // An emptyDir's data goes with its pod: kubectl drain refuses the node without --delete-emptydir-data,
    // and so does this (a running pod's; a finished or leaving one loses nothing more).
    const localData = movable.filter((p) => p.emptyDir && !p.finished && !p.terminating);
    if (localData.length > 0) {
      const names = someOf(localData.map((p) => `${p.namespace}/${p.name}`));
      throw new Error(
        `cannot drain ${name}: ${names} ${localData.length > 1 ? 'use' : 'uses'} an emptyDir volume whose data an eviction deletes (kubectl drain refuses it without --delete-emptydir-data); move or delete ${localData.length > 1 ? 'them' : 'it'}, then retry`,
      );
    }
    const evicted: string[] = [];
    podCount = movable.length;
    await options.onProgress?.(0, movable.length);
    // The first pod that fails the node stops the others: no eviction after the node's item is reported. The
    // node fails (with the first reason) once every other pod's call on its way has been answered: failed at
    // once, its item was reported and its batch could release its node locks while an eviction it had sent
    // was still to land.
    const stop = new AbortController();
    const signal = AbortSignal.any([options.signal, stop.signal]);
    let failure: { error: unknown } | undefined;
    await Promise.all(
      movable.map(async (pod) => {
        try {
          await evictOne(pod);
        } catch (error) {
          failure ??= { error };
          stop.abort(error);
        }
      }),
    );
    if (failure !== undefined) throw failure.error;
    async function evictOne(pod: PodRef): Promise<void> {
      const id = `${pod.namespace}/${pod.name}`;
      const deadline = Date.now() + timeoutMs;
      // Whether the pod listed is gone, or another one has its name now (a StatefulSet's, recreated).
      const goneOrReplaced = async () => {
        let now: PodRef | null;
        try {
          now = await readRetrying(() => nodes.pod(pod.namespace, pod.name), { ...options, signal });
        } catch (error) {
          if (signal.aborted) throw error;
          throw new Error(`evicting ${id}: reading the pod failed: ${describeKube(error)}`);
        }
        return now === null || now.uid !== pod.uid;
      };
      // Evictions that timed out or met a conflict, sent again up to `maxAttempts` calls in all.
      let attempts = 0;
      for (;;) {
        signal.throwIfAborted();
        await options.beforeEvict?.();
        signal.throwIfAborted();
        try {
          // With the listed pod's uid as a precondition: an eviction sent again after one that timed out but
          // did land cannot evict a pod recreated under the same name since; the API refuses it with 409.
          await nodes.evict(pod.namespace, pod.name, pod.uid);
          sent.push(id);
          break;
        } catch (error) {
          if (error instanceof KubeApiError && error.status === 404) {
            sent.push(id);
            break; // already gone
          }
          if (error instanceof KubeApiError && error.status === 409) {
            // The uid precondition failed: the pod listed went (an eviction of ours that timed out, or
            // someone else) and another has its name. Any other conflict is retried as a timeout is.
            if (await goneOrReplaced()) {
              sent.push(id);
              break;
            }
            if (++attempts < options.maxAttempts) continue;
          }
          if (error instanceof KubeApiError && error.status === 429 && Date.now() < deadline) {
            // The budget checked is the one of the pod now under the name: after an eviction of ours that
            // timed out, a recreated pod's budget may refuse until the deadline though ours is gone.
            if (attempts > 0 && (await goneOrReplaced())) {
              sent.push(id);
              break;
            }
            // Each guarded pod retries on its own: at the poll's pace a drain of a few nodes sent the API
            // server several refused evictions a second for as long as the budgets held.
            const wait =
              error.retryAfterS !== null && error.retryAfterS > 0 ? retryWaitMs(error) : evictionRetryMs;
            await sleep(wait, signal);
            continue;
          }
          // An eviction that timed out is sent again (the uid precondition makes that safe).
          if (
            error instanceof KubeApiError &&
            error.status === 0 &&
            error.reason === 'Timeout' &&
            ++attempts < options.maxAttempts
          )
            continue;
          const why =
            error instanceof KubeApiError && error.status !== 0
              ? `${error.status} ${error.reason}: ${error.message}`
              : error instanceof KubeApiError
                ? error.message
                : String(error);
          throw new Error(`evicting ${id}: ${why}`);
        }
      }
      // The pod's termination (its grace period, its finalizers) gets a time limit of its own: counted from the
      // eviction's start, a pod a budget held for most of it failed its node before its grace period ran out.
      const terminateBy = Date.now() + timeoutMs;
      for (;;) {
        let now: PodRef | null;
        try {
          now = await readRetrying(() => nodes.pod(pod.namespace, pod.name), { ...options, signal });
        } catch (error) {
          // The node's reason says the pod was evicted already: a bare API message did not tell a node left
          // untouched from one half drained.
          if (signal.aborted) throw error;
          throw new Error(
            `${id} was evicted, but reading it while waiting for it to terminate failed: ${describeKube(error)}`,
          );
        }
        if (now === null || now.uid !== pod.uid) break;
        if (Date.now() > terminateBy) throw new Error(`${id} was evicted but did not terminate in time`);
        await sleep(pollMs, signal);
      }
      evicted.push(id);
      await options.onProgress?.(evicted.length, movable.length);
    }
    return {
      ...cordon,
      evicted: evicted.sort(),
      skipped: skipped.map((p) => `${p.namespace}/${p.name}`).sort(),
    };
  }
}

/** Pods named in a failed drain's reason, at most (the rest counted): a node may run a hundred. */
const NAMED_PODS = 5;

/**
 * The first {@link NAMED_PODS} of `names` and how many more, for a reason: one naming each of a node's
 * hundred bare pods ran past the item's 4,096 characters, whose clip took off what the node was left as.
 */
function someOf(names: readonly string[]): string {
  const more = names.length > NAMED_PODS ? ` and ${names.length - NAMED_PODS} more` : '';
  return `${names.slice(0, NAMED_PODS).join(', ')}${more}`;
}

/**
 * What a drain that failed past its cordon left behind, for the node's reason: "w1 is left cordoned; 2 of
 * the 5 pods to move were evicted (shop/a, shop/b): uncordon it, or retry the drain". `podCount`: the pods
 * the drain would evict, unknown when it failed before they were sorted.
 */
export function leftState(name: string, sent: readonly string[], podCount?: number): string {
  const fix = 'uncordon it, or retry the drain';
  if (sent.length === 0) return `${name} is left cordoned; no pod was evicted: ${fix}`;
  const listed = `(${someOf([...sent].sort())})`;
  const counted =
    podCount === undefined
      ? `${sent.length} ${sent.length === 1 ? 'pod was' : 'pods were'}`
      : podCount === sent.length
        ? podCount === 1
          ? 'the 1 pod to move was'
          : `all ${podCount} pods to move were`
        : `${sent.length} of the ${podCount} pods to move ${sent.length === 1 ? 'was' : 'were'}`;
  return `${name} is left cordoned; ${counted} evicted ${listed}: ${fix}`;
}

/**
 * The pods of a node as a drain sorts them: `skipped`, left in place (mirror pods, and DaemonSet pods still
 * running whose DaemonSet exists); `movable`, every other one, which a drain evicts (or refuses the node
 * for); `ownerless`, the running DaemonSet pods among them whose DaemonSet no longer exists. Throws when a
 * DaemonSet cannot be read.
 */
async function sortPods(
  nodes: KubeNodes,
  name: string,
  pods: PodRef[],
  options: { maxAttempts: number; signal: AbortSignal },
): Promise<{ skipped: PodRef[]; movable: PodRef[]; ownerless: Set<PodRef> }> {
  // A DaemonSet's pod is left in place only while its DaemonSet exists, as kubectl drain does: one whose
  // DaemonSet was deleted (orphaned, still running) is recreated by nothing, and kubectl drain refuses the
  // node without --force; so does this, before any eviction. A finished one is evicted (nothing is lost).
  const daemonSetPods = pods.filter((p) => p.controller === 'DaemonSet' && !p.mirror && !p.finished);
  const daemonSets = new Map<string, boolean>();
  const ownerless = new Set<PodRef>();
  for (const pod of daemonSetPods) {
    const owner = `${pod.namespace}/${pod.controllerName ?? ''}`;
    let exists = daemonSets.get(owner);
    if (exists === undefined) {
      try {
        exists = await readRetrying(
          () => nodes.daemonSetExists(pod.namespace, pod.controllerName ?? ''),
          options,
        );
      } catch (error) {
        const why =
          error instanceof KubeApiError && error.status !== 0
            ? `${error.status} ${error.reason}: ${error.message}`
            : (error as Error).message;
        throw new Error(
          `cannot drain ${name}: reading DaemonSet ${owner} of pod ${pod.namespace}/${pod.name}: ${why}`,
        );
      }
      daemonSets.set(owner, exists);
    }
    if (!exists) ownerless.add(pod);
  }
  const skipped = pods.filter((p) => p.mirror || (daemonSetPods.includes(p) && !ownerless.has(p)));
  return { skipped, movable: pods.filter((p) => !skipped.includes(p)), ownerless };
}

/**
 * Whether a node is drained, by the rules of {@link drainNode}: cordoned, and without a pod the drain would
 * evict (or refuse the node for) — only mirror pods and running pods of existing DaemonSets left. Reads the
 * node's pods (and their DaemonSets); throws when it cannot.
 */
export async function isDrained(
  nodes: KubeNodes,
  node: { name: string; unschedulable: boolean },
  options: { maxAttempts: number; signal: AbortSignal },
): Promise<boolean> {
  if (!node.unschedulable) return false;
  const pods = await readRetrying(() => nodes.podsOn(node.name), options);
  return (await sortPods(nodes, node.name, pods, options)).movable.length === 0;
}

/** An API error as a node's reason shows it: `500 InternalError: …`, or the message of a timeout. */
function describeKube(error: unknown): string {
  return error instanceof KubeApiError && error.status !== 0
    ? `${error.status} ${error.reason}: ${error.message}`
    : error instanceof Error
      ? error.message
      : String(error);
}
