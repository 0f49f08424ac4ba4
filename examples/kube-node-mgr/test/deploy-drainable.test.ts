/**
 * The app runs on the cluster it manages (deploy/): a node running one of its replicas must stay drainable
 * by the app itself, whose drain refuses a node with a pod using an `emptyDir` volume (as `kubectl drain`
 * does without `--delete-emptydir-data`).
 */
import { readFileSync } from 'node:fs';
import { type KubernetesObject, loadAllYaml, type V1Deployment } from '@kubernetes/client-node';
import { expect, it } from 'vitest';
import { hasEmptyDir } from '../src/server/kube-nodes.js';

it('deploys replicas without an emptyDir volume, so the nodes running them can be drained', () => {
  const objects = loadAllYaml(
    readFileSync(new URL('../deploy/deployment.yaml', import.meta.url), 'utf8'),
  ) as KubernetesObject[];
  const deployment = objects.find((o) => o.kind === 'Deployment') as V1Deployment | undefined;
  expect(deployment?.spec?.template.spec?.containers.length).toBeGreaterThan(0);
  // With an emptyDir, draining any node that runs a replica failed: "cannot drain worker-3:
  // kube-node-mgr/kube-node-mgr-… uses an emptyDir volume whose data an eviction deletes".
  expect(hasEmptyDir(deployment?.spec?.template.spec)).toBe(false);
});
