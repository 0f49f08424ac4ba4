import type { KubeNodes } from './kube-nodes.js';
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
}

/**
 * Read–modify–write of one node: reads it, computes the merge patch (carrying the resourceVersion just
 * read), patches, and on 409 Conflict (someone changed the node in between) starts over from a fresh read,
 * up to `maxAttempts` times. Throws an `Error` whose message is the reason shown for a failed node.
 */
export async function applyToNode(
  nodes: KubeNodes,
  name: string,
  op: Operation,
  options: ApplyOptions,
): Promise<NodeResult> {
  let conflicts = 0;
  for (let attempt = 1; ; attempt++) {
    options.signal.throwIfAborted();
    try {
      const node = await nodes.get(name);
      const patch = patchFor(op, node, options.now?.() ?? new Date());
      if (patch === null) return { outcome: 'unchanged', conflicts, resourceVersion: node.resourceVersion };
      options.signal.throwIfAborted();
      const after = await nodes.mergePatch(name, patch);
      return { outcome: 'changed', conflicts, resourceVersion: after.resourceVersion };
    } catch (error) {
      if (error instanceof KubeApiError && error.status === 409) {
        conflicts++;
        if (attempt < options.maxAttempts) continue;
        throw new Error(`conflict: the node kept changing (${conflicts} attempts): ${error.message}`);
      }
      if (error instanceof KubeApiError) {
        throw new Error(
          error.status === 0 ? error.message : `${error.status} ${error.reason}: ${error.message}`,
        );
      }
      throw error;
    }
  }
}
