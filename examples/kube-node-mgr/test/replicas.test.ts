import { type ChildProcess, spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SERVER_OPTIONS } from '../src/server/config.js';
import { freePort } from '../src/server/replica-set.js';
import { loadReplicasConfig, MAX_REPLICAS, REPLICAS_USAGE } from '../src/server/replicas-config.js';

const root = fileURLToPath(new URL('..', import.meta.url));

describe('loadReplicasConfig', () => {
  it('answers --help and -h instead of failing on them', () => {
    expect(loadReplicasConfig(['--help'], {})).toBe('help');
    expect(loadReplicasConfig(['-h'], {})).toBe('help');
    expect(REPLICAS_USAGE).toContain('--replicas N');
    // The server's own flags are listed too: the launcher takes the same ones.
    for (const flag of ['--demo-fail-nodes', '--demo-port', '--users-file', '--kubeconfig'])
      expect(REPLICAS_USAGE).toContain(flag);
  });

  it('takes the demo flags for the shared demo cluster', () => {
    const config = loadReplicasConfig(
      [
        '--demo-port',
        '0',
        '--demo-fail-nodes',
        'worker-2, spot-1',
        '--demo-latency-ms',
        '5',
        '--demo-seed',
        '7',
      ],
      {},
    );
    expect(config).toMatchObject({
      demo: {
        port: 0,
        options: { failNodes: ['worker-2', 'spot-1'], latencyMs: 5, seed: 7, failureRate: 0 },
      },
      kubeArgs: [],
      serverArgs: [],
    });
  });

  it('reads PORT, HOST, REPLICAS and DATABASE_URL, flags winning', () => {
    const env = { PORT: '42010', HOST: '0.0.0.0', REPLICAS: '2', DATABASE_URL: 'postgres://a:b@h/db' };
    expect(loadReplicasConfig([], env)).toMatchObject({
      port: 42010,
      host: '0.0.0.0',
      replicas: 2,
      databaseUrl: 'postgres://a:b@h/db',
    });
    expect(
      loadReplicasConfig(['--port', '0', '--replicas', '4', '--database-url', 'postgres://x/y'], env),
    ).toMatchObject({ port: 0, replicas: 4, databaseUrl: 'postgres://x/y' });
  });

  it('passes the other server flags on to each replica, and real-Kubernetes flags instead of the demo', () => {
    const config = loadReplicasConfig(
      [
        '--kubeconfig',
        '/k/config',
        '--context',
        'prod',
        '--concurrency',
        '2',
        '--users-file',
        '/etc/users.json',
        '--trust-proxy',
        '--allowed-origins',
        'https://a.example',
        '--name',
        'web',
      ],
      {},
    );
    expect(config).toMatchObject({
      demo: undefined,
      kubeArgs: ['--kubeconfig', '/k/config', '--context', 'prod'],
      serverArgs: [
        '--users-file',
        '/etc/users.json',
        '--concurrency',
        '2',
        '--allowed-origins',
        'https://a.example',
      ],
      trustProxy: true,
      namePrefix: 'web',
    });
    expect(loadReplicasConfig(['--kube-server', 'http://127.0.0.1:9'], {})).toMatchObject({
      kubeArgs: ['--kube-server', 'http://127.0.0.1:9'],
    });
  });

  it('passes on, or acts on, every flag of the server (its usage says each reaches every replica)', () => {
    // `--lease-ttl-ms` was accepted and dropped: every replica ran with the default 15 s.
    const actedOn = new Set([
      'help',
      'port',
      'host',
      'kubeconfig',
      'context',
      'in-cluster',
      'kube-server',
      'demo',
      'database-url',
      'trust-proxy',
      'trust-proxy-hops',
      'name',
    ]);
    for (const flag of Object.keys(SERVER_OPTIONS)) {
      if (actedOn.has(flag) || flag.startsWith('demo-')) continue;
      const config = loadReplicasConfig([`--${flag}`, '500'], {});
      expect(config === 'help' ? [] : config.serverArgs, flag).toEqual([`--${flag}`, '500']);
    }
  });

  it('rejects unknown flags and bad values with a message naming the flag', () => {
    expect(() => loadReplicasConfig(['--bogus'], {})).toThrow(/--bogus/);
    expect(() => loadReplicasConfig(['--replicas', '0'], {})).toThrow(
      /--replicas \(REPLICAS\) must be an integer ≥ 1/,
    );
    expect(() => loadReplicasConfig(['--replicas', String(MAX_REPLICAS + 1)], {})).toThrow(/at most/);
    expect(() => loadReplicasConfig(['--port', 'x'], {})).toThrow(/--port/);
    expect(() => loadReplicasConfig(['--concurrency', '0'], {})).toThrow(/--concurrency/);
    expect(() => loadReplicasConfig(['--lease-ttl-ms', '10'], {})).toThrow(/--lease-ttl-ms/);
    expect(() => loadReplicasConfig(['--demo-failure-rate', '2'], {})).toThrow(/--demo-failure-rate/);
  });
});

// The launcher as `npm run serve:replicas` runs it: bundled like scripts/build-server.mjs does, with a
// stand-in `server.mjs` beside it (the real one needs the built workspace packages).
describe('the replicas launcher (bundled)', () => {
  const dir = path.join(root, '.tmp', `launcher-test-${process.pid}`);
  const launcher = path.join(dir, 'replicas.mjs');
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    mkdirSync(dir, { recursive: true });
    await build({
      entryPoints: { replicas: path.join(root, 'src/server/replicas.ts') },
      outdir: dir,
      outExtension: { '.js': '.mjs' },
      bundle: true,
      platform: 'node',
      target: 'node20',
      format: 'esm',
      packages: 'external',
      logLevel: 'warning',
    });
    copyFileSync(path.join(root, 'test/fixtures/echo-server.mjs'), path.join(dir, 'server.mjs'));
  });
  afterAll(() => {
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  /** Runs the launcher; resolves once `until` matches its output, or when it exits. */
  function run(args: string[], env: NodeJS.ProcessEnv, until?: RegExp) {
    const child = spawn(process.execPath, [launcher, ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    let output = '';
    return new Promise<{ child: ChildProcess; output: string; code: number | null }>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`launcher timed out:\n${output}`)), 15_000);
      const onData = (chunk: Buffer) => {
        output += chunk.toString('utf8');
        if (until?.test(output)) {
          clearTimeout(timer);
          resolve({ child, output, code: null });
        }
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      child.once('exit', (code) => {
        clearTimeout(timer);
        resolve({ child, output, code });
      });
    });
  }

  it('prints its usage on --help and exits 0', async () => {
    const { output, code } = await run(['--help'], {});
    expect(code).toBe(0);
    expect(output).toContain('Usage: node dist/replicas.mjs');
    expect(output).toContain('--demo-fail-nodes');
  });

  it('exits 1 with a one-line message on an unknown flag', async () => {
    const { output, code } = await run(['--no-such-flag'], {});
    expect(code).toBe(1);
    expect(output.trim().split('\n')).toHaveLength(1);
    expect(output).toMatch(/^kube-node-mgr replicas: .*--no-such-flag/);
  });

  it('serves on the PORT asked for, with the demo flags applied to the shared demo cluster', async () => {
    const port = await freePort();
    const { child, output } = await run(
      // The demo cluster is asked for the same port: the proxy, bound first, keeps it.
      [
        '--replicas',
        '2',
        '--demo-port',
        String(port),
        '--demo-fail-nodes',
        'worker-2',
        '--demo-latency-ms',
        '0',
      ],
      { PORT: String(port), DATABASE_URL: 'postgres://app:pw-launcher@127.0.0.1:1/app' },
      /postgres: +\S+\n/,
    );
    try {
      expect(output).toContain(`open:         http://127.0.0.1:${port}\n`);
      expect(output).toContain('postgres:     postgres://app:***@127.0.0.1:1/app');
      const echo = (await (await fetch(`http://127.0.0.1:${port}/`)).json()) as { argv: string[] };
      expect(echo.argv.join(' ')).not.toContain('pw-launcher');
      const demoUrl = output.match(/demo cluster: (http:\/\/\S+)/)?.[1] as string;
      const patch = (node: string) =>
        fetch(`${demoUrl}/api/v1/nodes/${node}`, {
          method: 'PATCH',
          headers: { 'content-type': 'application/merge-patch+json' },
          body: JSON.stringify({ metadata: { labels: { probe: 'yes' } } }),
        });
      expect((await patch('worker-1')).status).toBe(200);
      expect((await patch('worker-2')).status).toBe(500);
    } finally {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
  });
});
