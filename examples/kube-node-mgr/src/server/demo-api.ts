/**
 * The Kubernetes API's wire rules the demo cluster follows: `Status` errors, JSON merge and strategic merge
 * patches, label selectors, node validation, the `Table` form kubectl asks for, and the discovery documents.
 */
import type http from 'node:http';
import { type DemoNode, GIT_VERSION } from './demo-nodes.js';
import { labelValueError, qualifiedNameError } from './operations.js';

export type Status = { code: number; reason: string; message: string; details?: Record<string, unknown> };

export function status({ code, reason, message, details }: Status): Record<string, unknown> {
  return {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message,
    reason,
    ...(details === undefined ? {} : { details }),
    code,
  };
}

export class HttpStatusError extends Error {
  readonly status: Status;
  constructor(s: Status) {
    super(s.message);
    this.status = s;
  }
}

export const notFound = (name: string) =>
  new HttpStatusError({
    code: 404,
    reason: 'NotFound',
    message: `nodes "${name}" not found`,
    details: { name, kind: 'nodes' },
  });

export const badRequest = (message: string) =>
  new HttpStatusError({ code: 400, reason: 'BadRequest', message });

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** RFC 7386 JSON merge patch: objects merge, `null` deletes, everything else (arrays too) replaces. */
export function jsonMergePatch(target: unknown, patch: unknown): unknown {
  if (!isRecord(patch)) return structuredClone(patch);
  const result: Record<string, unknown> = isRecord(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = jsonMergePatch(result[key], value);
  }
  return result;
}

/**
 * The strategic merge patch of a Node, for the fields this app and `kubectl taint` / `cordon` / `label`
 * touch. Maps merge as in a JSON merge patch (`null` deletes a key). Lists are replaced as a whole: the
 * real API declares `spec.taints` `listType=atomic` (no patch merge key), which is why `kubectl taint`
 * sends the complete new list. The directives `$patch: replace` / `$patch: delete` on a map, `$retainKeys`
 * and `$setElementOrder/<list>` are understood (the last two carry nothing for atomic lists and are
 * dropped).
 */
export function strategicMergePatch(target: unknown, patch: unknown): unknown {
  if (!isRecord(patch)) return structuredClone(patch);
  if (patch.$patch === 'delete') return undefined;
  const replace = patch.$patch === 'replace';
  const result: Record<string, unknown> = isRecord(target) && !replace ? { ...target } : {};
  const retain = Array.isArray(patch.$retainKeys) ? (patch.$retainKeys as unknown[]) : undefined;
  for (const [key, value] of Object.entries(patch)) {
    if (
      key === '$patch' ||
      key === '$retainKeys' ||
      key.startsWith('$setElementOrder/') ||
      key.startsWith('$deleteFromPrimitiveList/')
    ) {
      continue;
    }
    if (value === null) delete result[key];
    else {
      const merged = strategicMergePatch(result[key], value);
      if (merged === undefined) delete result[key];
      else result[key] = merged;
    }
  }
  if (retain !== undefined)
    for (const key of Object.keys(result)) if (!retain.includes(key)) delete result[key];
  return result;
}

/** Parses `a=b,c!=d,e,!f,g in (x,y)` the way the API server does for the forms this app uses. */
export function labelMatcher(selector: string): (labels: Record<string, string>) => boolean {
  const tests: ((labels: Record<string, string>) => boolean)[] = [];
  // As the API server parses a selector: each key a qualified name, each value a label value. Matched as
  // given, `pool=gpu=a` listed no node (200) where a real cluster answers 400.
  const checked = (part: string, key: string, values: readonly string[]) => {
    const problem = qualifiedNameError(key);
    if (problem !== null)
      throw badRequest(
        `unable to parse requirement: ${part}: key: Invalid value: ${JSON.stringify(key)}: ${problem}`,
      );
    for (const value of values) {
      const bad = labelValueError(value);
      if (bad !== null)
        throw badRequest(
          `unable to parse requirement: ${part}: values: Invalid value: ${JSON.stringify(value)}: ${bad}`,
        );
    }
  };
  // Split on commas outside parentheses.
  const parts = selector.match(/[^,(]+(\([^)]*\))?[^,]*/g) ?? [];
  for (const raw of parts) {
    const part = raw.trim();
    if (part === '') continue;
    const equality = part.match(/^([^!=\s]+)\s*(==|=|!=)\s*(\S*)$/);
    const set = part.match(/^(\S+)\s+(in|notin)\s+\(([^)]*)\)$/);
    const absent = part.match(/^!(\S+)$/);
    if (equality) {
      const [, key = '', op, value = ''] = equality;
      checked(part, key, [value]);
      tests.push(op === '!=' ? (l) => l[key] !== value : (l) => l[key] === value);
    } else if (set) {
      const [, key = '', op, list = ''] = set;
      // `in ()` would match nodes whose label is '' (the split gives ['']): the API server refuses it.
      if (list.trim() === '')
        throw badRequest(
          `unable to parse requirement: ${part}: values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty`,
        );
      const values = list.split(',').map((v) => v.trim());
      checked(part, key, values);
      tests.push(
        op === 'in' ? (l) => values.includes(l[key] ?? '\0') : (l) => !values.includes(l[key] ?? '\0'),
      );
    } else if (absent) {
      const key = absent[1] ?? '';
      checked(part, key, []);
      // Own labels only: `in` also finds what every object inherits (`constructor`, `toString`).
      tests.push((l) => !Object.hasOwn(l, key));
    } else if (/^\S+$/.test(part)) {
      checked(part, part, []);
      tests.push((l) => Object.hasOwn(l, part));
    } else {
      throw badRequest(`unable to parse requirement: ${part}`);
    }
  }
  return (labels) => tests.every((t) => t(labels));
}

const TAINT_EFFECTS = ['NoSchedule', 'PreferNoSchedule', 'NoExecute'];

/** The server-side validation kubectl would otherwise meet on a real cluster, for what a patch can break. */
export function validateNode(node: DemoNode): void {
  if (!isRecord(node.spec)) throw badRequest('spec must be an object');
  const taints = node.spec.taints ?? [];
  if (!Array.isArray(taints)) throw badRequest('spec.taints must be a list');
  const seen = new Set<string>();
  for (const [i, taint] of taints.entries()) {
    if (!isRecord(taint) || typeof taint.key !== 'string' || taint.key === '') {
      throw invalid(node.metadata.name, 'spec.taints[].key: Required value');
    }
    // As the API server validates a taint (key: a qualified name, value: a label value): the demo cluster
    // stored any string, so a client tried against it saw 200 where a real cluster answers 422.
    const keyProblem = qualifiedNameError(taint.key);
    if (keyProblem !== null) {
      throw invalid(
        node.metadata.name,
        `spec.taints[${i}].key: Invalid value: ${JSON.stringify(taint.key)}: ${keyProblem}`,
      );
    }
    const value: unknown = taint.value ?? '';
    const valueProblem = typeof value === 'string' ? labelValueError(value) : 'must be a string';
    if (valueProblem !== null) {
      throw invalid(
        node.metadata.name,
        `spec.taints[${i}].value: Invalid value: ${JSON.stringify(value)}: ${valueProblem}`,
      );
    }
    if (!TAINT_EFFECTS.includes(taint.effect)) {
      throw invalid(
        node.metadata.name,
        `spec.taints[].effect: Unsupported value: "${String(taint.effect)}": supported values: "NoSchedule", "PreferNoSchedule", "NoExecute"`,
      );
    }
    const id = `${taint.key}:${taint.effect}`;
    if (seen.has(id)) throw invalid(node.metadata.name, `spec.taints: Duplicate value: "${id}"`);
    seen.add(id);
  }
  for (const [key, value] of Object.entries(node.metadata.labels ?? {})) {
    if (typeof value !== 'string')
      throw invalid(node.metadata.name, `metadata.labels: Invalid value: ${key}`);
    const problem = qualifiedNameError(key) ?? labelValueError(value);
    if (problem !== null) {
      const bad = qualifiedNameError(key) === null ? value : key;
      throw invalid(node.metadata.name, `metadata.labels: Invalid value: ${JSON.stringify(bad)}: ${problem}`);
    }
  }
}

export function invalid(name: string, message: string): HttpStatusError {
  return new HttpStatusError({
    code: 422,
    reason: 'Invalid',
    message: `Node "${name}" is invalid: ${message}`,
    details: { name, kind: 'Node' },
  });
}

export function wantsTable(accept: string): boolean {
  return accept.includes('as=Table');
}

/** The server-side printing kubectl asks for (`Accept: …;as=Table;g=meta.k8s.io;v=v1`). */
export function table(nodes: DemoNode[]): unknown {
  const now = Date.now();
  return {
    kind: 'Table',
    apiVersion: 'meta.k8s.io/v1',
    metadata: {},
    columnDefinitions: [
      { name: 'Name', type: 'string', format: 'name', description: 'Name', priority: 0 },
      { name: 'Status', type: 'string', format: '', description: 'Node status', priority: 0 },
      { name: 'Roles', type: 'string', format: '', description: 'Node roles', priority: 0 },
      { name: 'Age', type: 'string', format: '', description: 'Age', priority: 0 },
      { name: 'Version', type: 'string', format: '', description: 'Kubelet version', priority: 0 },
      { name: 'Zone', type: 'string', format: '', description: 'Zone', priority: 1 },
      { name: 'Taints', type: 'string', format: '', description: 'Taints', priority: 1 },
    ],
    rows: nodes.map((n) => {
      const roles = Object.keys(n.metadata.labels)
        .filter((k) => k.startsWith('node-role.kubernetes.io/'))
        .map((k) => k.slice('node-role.kubernetes.io/'.length))
        .join(',');
      const days = Math.floor((now - Date.parse(n.metadata.creationTimestamp)) / 86_400_000);
      return {
        cells: [
          n.metadata.name,
          n.spec.unschedulable ? 'Ready,SchedulingDisabled' : 'Ready',
          roles || '<none>',
          `${days}d`,
          GIT_VERSION,
          n.metadata.labels['topology.kubernetes.io/zone'] ?? '',
          (n.spec.taints ?? []).map((t) => `${t.key}${t.value ? `=${t.value}` : ''}:${t.effect}`).join(',') ||
            '<none>',
        ],
        object: { kind: 'PartialObjectMetadata', apiVersion: 'meta.k8s.io/v1', metadata: n.metadata },
      };
    }),
  };
}

export function readBody(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > 1024 * 1024) {
        reject(badRequest('request body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/** The discovery documents kubectl reads before it acts (`undefined` for other paths). */
export function discovery(path: string): unknown {
  switch (path) {
    case '/version':
      return {
        major: '1',
        minor: '31',
        gitVersion: GIT_VERSION,
        gitCommit: '0000000000000000000000000000000000000000',
        gitTreeState: 'clean',
        buildDate: '2026-01-01T00:00:00Z',
        goVersion: 'go1.22.5',
        compiler: 'gc',
        platform: 'linux/amd64',
      };
    case '/api':
      return {
        kind: 'APIVersions',
        versions: ['v1'],
        serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: '127.0.0.1' }],
      };
    case '/apis':
      return {
        kind: 'APIGroupList',
        apiVersion: 'v1',
        groups: ['apps', 'policy'].map((name) => ({
          name,
          versions: [{ groupVersion: `${name}/v1`, version: 'v1' }],
          preferredVersion: { groupVersion: `${name}/v1`, version: 'v1' },
        })),
      };
    case '/apis/apps/v1':
      return {
        kind: 'APIResourceList',
        apiVersion: 'v1',
        groupVersion: 'apps/v1',
        resources: [
          {
            name: 'daemonsets',
            singularName: 'daemonset',
            namespaced: true,
            kind: 'DaemonSet',
            verbs: ['get'],
            shortNames: ['ds'],
          },
        ],
      };
    case '/apis/policy/v1':
      return {
        kind: 'APIResourceList',
        apiVersion: 'v1',
        groupVersion: 'policy/v1',
        resources: [
          {
            name: 'poddisruptionbudgets',
            singularName: 'poddisruptionbudget',
            namespaced: true,
            kind: 'PodDisruptionBudget',
            verbs: ['list'],
            shortNames: ['pdb'],
          },
        ],
      };
    case '/api/v1':
      return {
        kind: 'APIResourceList',
        groupVersion: 'v1',
        resources: [
          {
            name: 'nodes',
            singularName: 'node',
            namespaced: false,
            kind: 'Node',
            verbs: ['get', 'list', 'patch'],
            shortNames: ['no'],
          },
          {
            name: 'pods',
            singularName: 'pod',
            namespaced: true,
            kind: 'Pod',
            verbs: ['get', 'list'],
            shortNames: ['po'],
          },
          {
            name: 'pods/eviction',
            singularName: '',
            namespaced: true,
            group: 'policy',
            version: 'v1',
            kind: 'Eviction',
            verbs: ['create'],
          },
        ],
      };
    default:
      return undefined;
  }
}
