// A CPU profile of just the measured window (PEERS_CPU_PROF_WINDOW=<dir>): the process profiles from one
// toggle to the next, so the connection set-up and teardown that `--cpu-prof` would also record (and that
// the CPU figures leave out) do not dilute the shares. Each window is written as
// <dir>/<label>-<pid>-<n>.cpuprofile. Without the variable, toggling does nothing.
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { join } from 'node:path';

const DIR = process.env.PEERS_CPU_PROF_WINDOW;
let session;
let windows = 0;

/** Starts a profile, or ends the running one and writes it. */
export async function toggleWindowProfile(label) {
  if (DIR === undefined) return;
  if (session === undefined) {
    session = new Session();
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.start');
    return;
  }
  const { profile } = await session.post('Profiler.stop');
  session.disconnect();
  session = undefined;
  windows += 1;
  writeFileSync(join(DIR, `${label}-${process.pid}-${windows}.cpuprofile`), JSON.stringify(profile));
}
