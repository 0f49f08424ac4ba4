/**
 * A rolling update (deploy/deployment.yaml) against the app's shutdown (`main.ts` → `App.close`): SIGTERM
 * makes the app refuse new connections at once, while kube-proxy and the ingress go on routing to the pod
 * until they learn that it left the Service's endpoints. A preStop sleep holds SIGTERM back that long, and the
 * grace period must hold the sleep and `App.close`'s bounded waits, or the kubelet kills the pod mid-drain.
 */
import { readFileSync } from 'node:fs';
import { type KubernetesObject, loadAllYaml, type V1Deployment } from '@kubernetes/client-node';
import { expect, it } from 'vitest';
import { CLOSE_STEP_MS } from '../src/server/app.js';

it('sleeps before SIGTERM, within a grace period that still holds the whole shutdown', () => {
  const objects = loadAllYaml(
    readFileSync(new URL('../deploy/deployment.yaml', import.meta.url), 'utf8'),
  ) as KubernetesObject[];
  const pod = (objects.find((o) => o.kind === 'Deployment') as V1Deployment | undefined)?.spec?.template.spec;
  const command = pod?.containers[0]?.lifecycle?.preStop?.exec?.command;
  // Without it, connections routed to the pod in the endpoints' propagation delay were refused.
  expect(command?.[0]).toBe('sleep');
  const sleepS = Number(command?.[1]);
  expect(sleepS).toBeGreaterThanOrEqual(5);
  // App.close's three waits, then the database's close: a few seconds kept for that and for the exit.
  const graceS = pod?.terminationGracePeriodSeconds ?? 30;
  expect(sleepS + (3 * CLOSE_STEP_MS) / 1000 + 3).toBeLessThanOrEqual(graceS);
});
