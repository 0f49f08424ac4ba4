import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type Config, loadConfig } from '../src/server/config.js';

/**
 * A review on 6 December 2026: without a users file the server made the demo users (`demo` / `demo`, an
 * admin) whatever cluster it managed. A deployment that lost its USERS_FILE, or `npm start` in a shell whose
 * KUBECONFIG names a real cluster, served that cluster's nodes (patch, drain) to anyone who knew the README.
 */
describe('the demo users', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'knm-users-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));
  const load = (argv: string[], env: NodeJS.ProcessEnv = {}): Config => {
    const config = loadConfig(argv, env, dir, path.join(dir, 'web'));
    if (config === 'help') throw new Error('--help');
    return config;
  };

  it('are refused with a kubeconfig or in-cluster: a users file is needed', () => {
    for (const [argv, env] of [
      [['--kubeconfig', '/etc/kube/config'], {}],
      [[], { KUBECONFIG: '/home/me/.kube/config' }],
      [['--in-cluster'], {}],
      [[], { KUBERNETES_SERVICE_HOST: '10.0.0.1' }],
    ] as const) {
      expect(() => load([...argv], { ...env }), JSON.stringify({ argv, env })).toThrow(/--users-file/);
    }
  });

  it('stay for the demo cluster and API servers without credentials, and a users file goes anywhere', () => {
    expect(load([]).kube).toEqual({ type: 'demo' });
    expect(load(['--demo'], { KUBECONFIG: '/home/me/.kube/config' }).kube).toEqual({ type: 'demo' });
    expect(load(['--kube-server', 'http://127.0.0.1:8001']).kube.type).toBe('server');
    expect(load(['--in-cluster', '--users-file', '/etc/knm/users.json']).kube).toEqual({
      type: 'in-cluster',
    });
    expect(load([], { KUBECONFIG: '/k', USERS_FILE: '/etc/knm/users.json' }).kube.type).toBe('kubeconfig');
  });
});
