/**
 * The deployment's probes (deploy/deployment.yaml) against the app: readiness follows the Finishline
 * server's health (its change feed, a shutdown under way), liveness does not, as docs/operations.md asks.
 */
import { readFileSync } from 'node:fs';
import { type KubernetesObject, loadAllYaml, type V1Deployment } from '@kubernetes/client-node';
import { afterEach, expect, it } from 'vitest';
import { type Harness, startHarness } from './harness.js';

let h: Harness | undefined;

afterEach(async () => {
  await h?.close();
  h = undefined;
});

function probePaths(): { readiness: string | undefined; liveness: string | undefined } {
  const objects = loadAllYaml(
    readFileSync(new URL('../deploy/deployment.yaml', import.meta.url), 'utf8'),
  ) as KubernetesObject[];
  const deployment = objects.find((o) => o.kind === 'Deployment') as V1Deployment | undefined;
  const container = deployment?.spec?.template.spec?.containers[0];
  return {
    readiness: container?.readinessProbe?.httpGet?.path,
    liveness: container?.livenessProbe?.httpGet?.path,
  };
}

it('takes a replica whose change feed is down out of the Service, without restarting it', async () => {
  const { readiness, liveness } = probePaths();
  expect(readiness).toBeDefined();
  expect(liveness).toBeDefined();
  h = await startHarness();
  const status = async (path: string | undefined) => (await fetch(`${h?.base}${path}`)).status;
  expect(await status(readiness)).toBe(200);
  expect(await status(liveness)).toBe(200);
  // As the Postgres feed reports a lost LISTEN connection (the harness runs SQLite, whose feed cannot
  // lose one): the readiness probe used to hit the app's own /healthz, which answered 200 regardless.
  Object.assign(h.store.changes, {
    health: () => ({ connected: false, lastError: 'connection terminated' }),
  });
  expect(await status(readiness)).toBe(503);
  expect(await status(liveness)).toBe(200);
});
