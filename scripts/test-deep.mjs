#!/usr/bin/env node
// The deep test run: every property at ≥ 1,000 runs (FC_MIN_RUNS) with a fresh random seed, printed first
// so a failure replays with `FC_SEED=<seed> npm run test:deep`. Extra arguments go to vitest.
import { spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';

const seed = process.env.FC_SEED || String(randomInt(1, 2 ** 31 - 1));
const minRuns = process.env.FC_MIN_RUNS || '1000';
process.stdout.write(
  `test:deep: FC_SEED=${seed} FC_MIN_RUNS=${minRuns} (replay: FC_SEED=${seed} npm run test:deep)\n`,
);
const started = Date.now();
const child = spawn('npx', ['vitest', 'run', '--testTimeout=1800000', ...process.argv.slice(2)], {
  stdio: 'inherit',
  env: { ...process.env, FC_SEED: seed, FC_MIN_RUNS: minRuns },
});
child.on('exit', (code, signal) => {
  process.stdout.write(
    `test:deep: seed ${seed}, ${Math.round((Date.now() - started) / 1000)} s, ${signal ?? `exit ${code}`}\n`,
  );
  process.exit(code ?? 1);
});
