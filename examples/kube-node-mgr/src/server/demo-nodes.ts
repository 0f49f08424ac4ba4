/**
 * The demo cluster's nodes as the Kubernetes API stores them, and the initial set: 3 control-plane nodes,
 * 2 GPU nodes, 2 spot nodes and workers, spread over three zones.
 */

/** A taint as the Kubernetes API stores it. */
export interface Taint {
  key: string;
  value?: string;
  effect: string;
  timeAdded?: string;
}

/** The parts of a `v1.Node` the demo cluster keeps. */
export interface DemoNode {
  apiVersion: 'v1';
  kind: 'Node';
  metadata: {
    name: string;
    uid: string;
    resourceVersion: string;
    creationTimestamp: string;
    labels: Record<string, string>;
    annotations: Record<string, string>;
    /**
     * Who set each field, as the API server records it. The demo tracks `spec.unschedulable` only: the
     * app ties its cordon notes to the cordon they describe by it.
     */
    managedFields?: {
      manager: string;
      operation: 'Update';
      apiVersion: 'v1';
      time: string;
      fieldsType: 'FieldsV1';
      fieldsV1: Record<string, unknown>;
    }[];
  };
  spec: { podCIDR?: string; providerID?: string; taints?: Taint[]; unschedulable?: boolean };
  status: Record<string, unknown>;
}

/** What a test hook sees of each request. */

export const GIT_VERSION = 'v1.31.0';

/** mulberry32: small, fast and good enough to make injected failures reproducible. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ZONES = ['eu-west-1a', 'eu-west-1b', 'eu-west-1c'] as const;

/** Builds the initial fleet: 3 control-plane nodes, general workers, GPU and spot pools. */
export function initialNodes(count: number): DemoNode[] {
  const created = '2026-01-12T09:30:00Z';
  const nodes: DemoNode[] = [];
  const add = (
    name: string,
    index: number,
    extra: { labels: Record<string, string>; taints?: Taint[]; type: string },
  ) => {
    const zone = ZONES[index % ZONES.length] ?? 'eu-west-1a';
    nodes.push({
      apiVersion: 'v1',
      kind: 'Node',
      metadata: {
        name,
        uid: `6f1c0d4e-0000-4000-8000-${String(nodes.length + 1).padStart(12, '0')}`,
        resourceVersion: '0',
        creationTimestamp: created,
        labels: {
          'beta.kubernetes.io/arch': 'amd64',
          'beta.kubernetes.io/os': 'linux',
          'kubernetes.io/arch': 'amd64',
          'kubernetes.io/hostname': name,
          'kubernetes.io/os': 'linux',
          'node.kubernetes.io/instance-type': extra.type,
          'topology.kubernetes.io/region': 'eu-west-1',
          'topology.kubernetes.io/zone': zone,
          ...extra.labels,
        },
        annotations: { 'node.alpha.kubernetes.io/ttl': '0' },
      },
      spec: {
        podCIDR: `10.244.${nodes.length}.0/24`,
        providerID: `aws:///${zone}/i-0${(0x5a3c1d00 + nodes.length).toString(16)}`,
        ...(extra.taints === undefined ? {} : { taints: extra.taints }),
      },
      status: {
        addresses: [
          { type: 'InternalIP', address: `10.0.${index % 3}.${10 + nodes.length}` },
          { type: 'Hostname', address: name },
        ],
        conditions: [
          {
            type: 'Ready',
            status: 'True',
            reason: 'KubeletReady',
            message: 'kubelet is posting ready status',
            lastHeartbeatTime: created,
            lastTransitionTime: created,
          },
        ],
        nodeInfo: {
          kubeletVersion: GIT_VERSION,
          kubeProxyVersion: GIT_VERSION,
          osImage: 'Ubuntu 22.04.4 LTS',
          kernelVersion: '6.5.0-1020-aws',
          containerRuntimeVersion: 'containerd://1.7.13',
          architecture: 'amd64',
          operatingSystem: 'linux',
        },
        capacity: { cpu: '8', memory: '32Gi', pods: '110' },
        allocatable: { cpu: '7910m', memory: '31Gi', pods: '110' },
      },
    });
  };
  for (let i = 0; i < 3; i++) {
    add(`cp-${i + 1}`, i, {
      type: 'm6i.large',
      labels: { 'node-role.kubernetes.io/control-plane': '' },
      taints: [{ key: 'node-role.kubernetes.io/control-plane', effect: 'NoSchedule' }],
    });
  }
  for (let i = 0; i < 2; i++) {
    add(`gpu-${i + 1}`, i, {
      type: 'g5.2xlarge',
      labels: { 'node-role.kubernetes.io/gpu': '', 'nvidia.com/gpu.present': 'true', pool: 'gpu' },
      taints: [{ key: 'nvidia.com/gpu', value: 'present', effect: 'NoSchedule' }],
    });
  }
  for (let i = 0; i < 2; i++) {
    add(`spot-${i + 1}`, i + 1, {
      type: 'c6i.2xlarge',
      labels: { 'node-role.kubernetes.io/worker': '', 'node.kubernetes.io/lifecycle': 'spot', pool: 'spot' },
      taints: [{ key: 'node.kubernetes.io/lifecycle', value: 'spot', effect: 'PreferNoSchedule' }],
    });
  }
  const workers = Math.max(count, 12) - nodes.length;
  for (let i = 0; i < workers; i++) {
    add(`worker-${i + 1}`, i, {
      type: i % 2 === 0 ? 'm6i.2xlarge' : 'm6i.4xlarge',
      labels: { 'node-role.kubernetes.io/worker': '', pool: 'general' },
    });
  }
  return nodes;
}
