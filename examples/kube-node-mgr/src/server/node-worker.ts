import type { KubeNodes, NodeView } from './kube-nodes.js';
import { KubeApiError } from './kube-nodes.js';
import { type Operation, patchFor } from './operations.js';

/** What one node's work reports as its item `detail`. */
export interface NodeResult {
  /** `changed` when a patch was applied, `unchanged` when the node already was as wanted. */
  outcome: 'changed' | 'unchanged';
  /** Conflicts (409) met and retried. */
  conflicts: number;
  resourceVersion: string;
}

/** Options of {@link applyToNode}. */
export interface ApplyOptions {
  /** Patch attempts before a node's conflicts count as a failure. */
  maxAttempts: number;
  signal: AbortSignal;
  now?: () => Date;
  /**
   * Called after the node was read and found to need the change, right before its PATCH is sent (on each
   * attempt that sends one): what must be on record before the change can land (a cordon's note).
   * @default none
   */
  beforePatch?: () => void | Promise<void>;
}

/** Longest `Retry-After` waited before a retry, in seconds (a larger one is waited this long). */
const MAX_RETRY_AFTER_S = 30;

/**
 * Waits `ms`, or rejects with the signal's reason once it aborts. The abort listener goes when the wait
 * ends: a drain polls one batch's signal up to `evictionTimeoutMs / pollMs` times per pod, and listeners
 * left behind would pile up on it for the whole batch.
 */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Whether the API asked to be called again later: 429 (API Priority and Fairness shedding load) or a 5xx
 * of an overloaded server, with `Retry-After` — what client-go, hence kubectl, waits out and retries. A
 * 5xx without it is an error of this request and fails the node.
 */
function askedToRetry(error: KubeApiError): boolean {
  return error.retryAfterS !== null && (error.status === 429 || (error.status >= 500 && error.status <= 504));
}

/**
 * Whether a request was aborted by the per-request timeout (see `KubeNodesOptions.requestTimeoutMs`): the
 * reads and the node patches (which carry the resourceVersion read, so one that did land is seen done by the
 * fresh read and never applied twice) are repeated at once, the timeout having been the wait.
 */
function timedOut(error: KubeApiError): boolean {
  return error.status === 0 && error.reason === 'Timeout';
}

/** How long to wait before calling again an API that asked for it: its `Retry-After`, at most {@link MAX_RETRY_AFTER_S}. */
export function retryWaitMs(error: KubeApiError): number {
  return Math.min(error.retryAfterS ?? 0, MAX_RETRY_AFTER_S) * 1000;
}

/**
 * Runs one read of the API, waiting out and repeating it while the server asks to be called again later
 * (429 or 5xx with `Retry-After`, see {@link askedToRetry}) or timed out, at most `maxAttempts` calls in all: client-go
 * does so for every request, and a drain's pod list and pod reads are shed under load as a patch is.
 */
export async function readRetrying<T>(
  read: () => Promise<T>,
  options: { maxAttempts: number; signal: AbortSignal },
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    options.signal.throwIfAborted();
    try {
      return await read();
    } catch (error) {
      if (!(error instanceof KubeApiError) || attempt >= options.maxAttempts) throw error;
      if (askedToRetry(error)) await sleep(retryWaitMs(error), options.signal);
      else if (!timedOut(error)) throw error;
    }
  }
}

/**
 * Read–modify–write of one node: reads it, computes the merge patch (carrying the resourceVersion just
 * read), patches, and on 409 Conflict (someone changed the node in between) starts over from a fresh read,
 * up to `maxAttempts` times; a 429 or 5xx with `Retry-After` is retried the same way after that wait, and
 * a request that timed out at once.
 *
 * A PATCH that timed out may have landed all the same (the API applied it; its answer was lost or late):
 * the node failed on its last attempt then, though changed. So a later read finding the change counts the
 * node `changed` (not `unchanged`), and before a node fails after such a PATCH it is read back once more:
 * the change found succeeds it; a node that cannot be read fails saying its state is unknown, to verify.
 * Throws an `Error` whose message is the reason shown for a failed node.
 */
export async function applyToNode(
  nodes: KubeNodes,
  name: string,
  op: Operation,
  options: ApplyOptions,
): Promise<NodeResult> {
  let conflicts = 0;
  // Whether a PATCH of this call timed out: from then on the node may hold the change without an answer.
  let patchTimedOut = false;
  for (let attempt = 1; ; attempt++) {
    options.signal.throwIfAborted();
    let patching = false;
    try {
      const node = await nodes.get(name);
      const patch = patchFor(op, node, options.now?.() ?? new Date());
      if (patch === null) {
        return {
          outcome: patchTimedOut ? 'changed' : 'unchanged',
          conflicts,
          resourceVersion: node.resourceVersion,
        };
      }
      await options.beforePatch?.();
      options.signal.throwIfAborted();
      patching = true;
      const after = await nodes.mergePatch(name, patch);
      return { outcome: 'changed', conflicts, resourceVersion: after.resourceVersion };
    } catch (error) {
      if (patching && error instanceof KubeApiError && timedOut(error)) patchTimedOut = true;
      if (error instanceof KubeApiError && error.status === 409) {
        conflicts++;
        if (attempt < options.maxAttempts) continue;
        return settle(
          new Error(`conflict: the node kept changing (${conflicts} attempts): ${error.message}`),
        );
      }
      if (error instanceof KubeApiError && askedToRetry(error) && attempt < options.maxAttempts) {
        await sleep(retryWaitMs(error), options.signal);
        continue;
      }
      if (error instanceof KubeApiError && timedOut(error) && attempt < options.maxAttempts) continue;
      if (error instanceof KubeApiError) {
        return settle(
          new Error(error.status === 0 ? error.message : `${error.status} ${error.reason}: ${error.message}`),
        );
      }
      throw error;
    }
  }

  /**
   * Ends the node with `failure`, unless a PATCH of it timed out: then the node is read back once more, and
   * the change found there succeeds it; a node that cannot be read fails saying its state is unknown.
   */
  async function settle(failure: Error): Promise<NodeResult> {
    if (!patchTimedOut || options.signal.aborted) throw failure;
    let node: NodeView;
    try {
      node = await nodes.get(name);
    } catch (error) {
      const why = error instanceof Error ? error.message : String(error);
      throw new Error(
        `unknown: a change sent to ${name} got no answer in time and may have landed, and the node could not be read back (${why}); verify ${name} before retrying (${failure.message})`,
      );
    }
    if (patchFor(op, node, options.now?.() ?? new Date()) !== null) throw failure;
    return { outcome: 'changed', conflicts, resourceVersion: node.resourceVersion };
  }
}
