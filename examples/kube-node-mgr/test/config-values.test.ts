import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadUsersFile } from '../src/server/auth.js';
import { type Config, loadConfig } from '../src/server/config.js';
import { KubeNodes, loadKubeConfig } from '../src/server/kube-nodes.js';
import { loadReplicasConfig } from '../src/server/replicas-config.js';

/**
 * A review on 7 December 2026 of the server's environment variables: several bad values were taken without a
 * word (KUBE_TIMEOUT_MS past 2^31 - 1 ms made every Kubernetes request time out after 1 ms, TRUST_PROXY=yes
 * trusted no proxy, KUBE_SERVER without a scheme started a server whose every call failed), or failed later
 * with a message that named an option of the code, not the variable (PORT=70000 at listen,
 * BATCH_CONCURRENCY=5000 in createApp, a short PROXY_SECRET).
 */
describe('the configuration from the environment', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'knm-config-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));
  const load = (env: NodeJS.ProcessEnv, argv: string[] = []): Config => {
    const config = loadConfig(argv, { SESSION_SECRET: 's'.repeat(32), ...env }, dir, path.join(dir, 'web'));
    if (config === 'help') throw new Error('--help');
    return config;
  };

  it('refuses each bad value with a message naming its variable', () => {
    const cases: [string, string][] = [
      ['PORT', '70000'],
      ['PORT', 'x'],
      ['DEMO_PORT', '65536'],
      ['BATCH_CONCURRENCY', '5000'],
      ['BATCH_CONCURRENCY', '0'],
      ['KUBE_TIMEOUT_MS', '3000000000'],
      ['KUBE_TIMEOUT_MS', '0'],
      ['LEASE_TTL_MS', '100000000'],
      ['LEASE_TTL_MS', '10'],
      ['TRUST_PROXY_HOPS', '11'],
      ['TRUST_PROXY', 'yes'],
      ['TRUST_PROXY', 'TRUE'],
      ['DEMO_LATENCY_MS', '3000000000'],
      ['DEMO_FAILURE_RATE', 'abc'],
      ['DEMO_FAILURE_RATE', '2'],
      ['DEMO_CLUSTERS', '3'],
      ['DEMO_SEED', '-1'],
      ['KUBE_SERVER', 'localhost:8001'],
      ['SESSION_SECRET', 'short'],
      ['PROXY_SECRET', 'short'],
    ];
    // DATABASE_URL named, its value not shown (it may hold a password).
    for (const value of ['notaurl', 'mysql://u:secret@h/db', '/var/run/postgresql app']) {
      expect(() => load({ DATABASE_URL: value }), value).toThrow(/DATABASE_URL\) must be a postgres:\/\//);
    }
    expect(load({ DATABASE_URL: 'postgresql://u:p@db:5432/app' }).databaseUrl).toBe(
      'postgresql://u:p@db:5432/app',
    );
    for (const [name, value] of cases) {
      expect(() => load({ [name]: value }), `${name}=${value}`).toThrow(name);
      expect(() => load({ [name]: value }), `${name}=${value}`).toThrow(value === 'short' ? '5' : value);
    }
  });

  it('takes the values at the bounds and the documented spellings', () => {
    const config = load({
      PORT: '65535',
      BATCH_CONCURRENCY: '1000',
      KUBE_TIMEOUT_MS: String(2 ** 31 - 1),
      LEASE_TTL_MS: '86400000',
      TRUST_PROXY_HOPS: '10',
      DEMO_LATENCY_MS: '0',
      PROXY_SECRET: 'p'.repeat(16),
      KUBE_SERVER: 'http://127.0.0.1:8001',
    });
    expect(config).toMatchObject({
      port: 65535,
      concurrency: 1000,
      kubeTimeoutMs: 2 ** 31 - 1,
      leaseTtlMs: 86_400_000,
      trustProxy: 10,
      proxySecret: 'p'.repeat(16),
      kube: { type: 'server', url: 'http://127.0.0.1:8001' },
    });
    for (const [value, hops] of [
      ['1', 1],
      ['true', 1],
      ['0', 0],
      ['false', 0],
      ['', 0],
    ] as const) {
      expect(load({ TRUST_PROXY: value }).trustProxy, `TRUST_PROXY=${value}`).toBe(hops);
    }
    expect(load({}, ['--trust-proxy']).trustProxy).toBe(1);
  });

  it('refuses a generated session secret file that was emptied, naming it', () => {
    mkdirSync(path.join(dir, 'data'));
    writeFileSync(path.join(dir, 'data', 'session-secret'), '\n');
    expect(() => loadConfig([], {}, dir, path.join(dir, 'web'))).toThrow(/session-secret must hold a secret/);
  });

  it('names the users file whose JSON is broken', () => {
    const file = path.join(dir, 'users.json');
    for (const text of ['{ users: [', 'null']) {
      writeFileSync(file, text);
      expect(() => loadUsersFile(file), text).toThrow(file);
    }
  });

  it('names the kubeconfig whose YAML is broken', () => {
    const file = path.join(dir, 'kubeconfig');
    writeFileSync(file, 'clusters: [\n');
    expect(() => loadKubeConfig({ type: 'kubeconfig', path: file, context: undefined })).toThrow(
      `kubeconfig ${file}: `,
    );
  });

  it('refuses TRUST_PROXY=yes and a port past 65535 in the replica launcher too', () => {
    expect(() => loadReplicasConfig([], { TRUST_PROXY: 'yes' })).toThrow(/TRUST_PROXY/);
    expect(() => loadReplicasConfig([], { PORT: '70000' })).toThrow(/PORT/);
    expect(() => loadReplicasConfig([], { DATABASE_URL: 'notaurl' })).toThrow(/DATABASE_URL/);
    expect(() => loadReplicasConfig(['--kube-timeout-ms', String(2 ** 31)], {})).toThrow(/--kube-timeout-ms/);
  });

  it('refuses a Kubernetes request timeout a timer cannot hold', () => {
    const kc = loadKubeConfig({ type: 'server', url: 'http://127.0.0.1:1' });
    expect(() => new KubeNodes(kc, { requestTimeoutMs: 2 ** 31 })).toThrow(/requestTimeoutMs/);
    expect(() => new KubeNodes(kc, { requestTimeoutMs: 2 ** 31 - 1 })).not.toThrow();
  });
});
