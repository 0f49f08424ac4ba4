import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type Config, loadConfig } from '../src/server/config.js';
import { loadReplicasConfig } from '../src/server/replicas-config.js';

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

  it('are refused with --kube-server beyond loopback: it may be kubectl proxy, a real cluster', () => {
    for (const [argv, env] of [
      [['--kube-server', 'http://127.0.0.1:8001', '--host', '0.0.0.0'], {}],
      [[], { KUBE_SERVER: 'http://127.0.0.1:8001', HOST: '0.0.0.0' }],
      [['--kube-server', 'east=http://10.0.0.1:8001,west=http://10.0.0.2:8001', '--host', '10.0.0.5'], {}],
      [['--kube-server', 'http://127.0.0.1:8001', '--host', '::'], {}],
    ] as const) {
      expect(() => load([...argv], { ...env }), JSON.stringify({ argv, env })).toThrow(/--users-file/);
      expect(() => loadReplicasConfig([...argv], { ...env }), JSON.stringify({ argv, env })).toThrow(
        /--users-file/,
      );
    }
    for (const host of ['127.0.0.1', 'localhost', '::1', '127.1.2.3']) {
      expect(load(['--kube-server', 'http://127.0.0.1:8001', '--host', host]).host).toBe(host);
      expect(loadReplicasConfig(['--kube-server', 'http://127.0.0.1:8001', '--host', host], {})).not.toBe(
        'help',
      );
    }
    const file = ['--users-file', '/etc/knm/users.json'];
    expect(load(['--kube-server', 'http://127.0.0.1:8001', '--host', '0.0.0.0', ...file]).host).toBe(
      '0.0.0.0',
    );
    expect(loadReplicasConfig(['--kube-server', 'http://k:8001', '--host', '0.0.0.0', ...file], {})).not.toBe(
      'help',
    );
    // The demo cluster is the example's own: its demo users go on any address (the container's 0.0.0.0).
    expect(load(['--host', '0.0.0.0']).kube).toEqual({ type: 'demo' });
    expect(loadReplicasConfig(['--host', '0.0.0.0'], {})).not.toBe('help');
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
