/** The page's entry: sign-in, the two views (nodes, audit) and the start. */
import type { Role } from '../shared/api-types.js';
import { ApiError, api } from './api.js';
import { loadAudit } from './audit.js';
import { $ } from './dom.js';
import { loadClusters, loadNodes } from './nodes.js';
// The operation dialog wires its buttons when loaded.
import './operation-dialog.js';
import { openProgress } from './progress-dialog.js';
import { endSession, onSessionEnd, onSessionMismatch } from './session.js';
import { canChange, RUNNING_TASK_KEY, signedIn, state } from './state.js';
import { loadTasks, startPolling } from './task-list.js';

// ---------------------------------------------------------------- login

export function showLogin(): void {
  $('#app-view').hidden = true;
  $('#audit-view').hidden = true;
  $('#nav').hidden = true;
  $('#logout').hidden = true;
  $('#whoami').textContent = '';
  $('#login-view').hidden = false;
  $<HTMLInputElement>('#login-form input[name=username]').focus();
}

// The other modules drop their rows, dialogs and watches; this one forgets who was signed in and shows the form.
onSessionEnd(() => {
  $('#logout-error').hidden = true;
  state.me = { username: '', role: 'viewer' };
  state.csrfToken = '';
  showLogin();
});

async function showApp(session: { username: string; role: Role; csrfToken: string }): Promise<void> {
  state.csrfToken = session.csrfToken;
  state.me = { username: session.username, role: session.role };
  $('#login-view').hidden = true;
  $('#nav').hidden = false;
  $('#logout').hidden = false;
  $('#whoami').textContent = `${session.username} (${session.role})`;
  $('#actions').hidden = !canChange();
  $('#read-only').hidden = canChange();
  // The cluster first: the node table, the task list and the audit page all show that cluster's.
  await loadClusters(() => {
    void loadTasks();
    if (location.hash === '#audit') void loadAudit(false);
  });
  route();
  await Promise.all([loadNodes(), loadTasks()]);
  startPolling();
  const running = sessionStorage.getItem(RUNNING_TASK_KEY);
  if (running !== null) openProgress(running);
}

$<HTMLFormElement>('#login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = new FormData(event.target as HTMLFormElement);
  $('#login-error').textContent = '';
  try {
    const session = await api<{ username: string; role: Role; csrfToken: string }>('/api/login', {
      method: 'POST',
      body: { username: form.get('username'), password: form.get('password') },
    });
    // Not left in the hidden form: after a 401 the next person at this browser would sign in with it.
    (event.target as HTMLFormElement).reset();
    await showApp(session);
  } catch (error) {
    $('#login-error').textContent = (error as Error).message;
  }
});

$('#logout').addEventListener('click', async () => {
  const problem = $('#logout-error');
  problem.hidden = true;
  try {
    await api('/api/logout', { method: 'POST', body: {} });
  } catch (error) {
    // Not taken (a proxy's 502, the network): the session and its cookie are still valid. Reloading anyway
    // showed the login form while the server was unreachable, and the user left believing it ended. A 401:
    // it had ended already, nothing is left to sign out of.
    if (!(error instanceof ApiError && error.status === 401)) {
      problem.textContent = `Not signed out: ${(error as Error).message}. You are still signed in.`;
      problem.hidden = false;
      return;
    }
  }
  sessionStorage.removeItem(RUNNING_TASK_KEY);
  location.reload();
});

// A sign-in in another tab (the same user again, or another) replaces the browser's cookie: this page's user,
// role and CSRF token are then the old session's, its POSTs refused, its reads the new session's rows under
// the old name, and its socket, refused after the old session's logout, "disconnected" for good. Checked when
// the tab comes back into view and when a POST is refused for its token: another session is taken as a new
// sign-in (the old one's views, watches and socket dropped); an ended one gets a 401 (api.ts ends it).
let checking = false;
async function checkSession(): Promise<void> {
  if (checking || !signedIn()) return;
  checking = true;
  try {
    const session = await api<{ username: string; role: Role; csrfToken: string }>('/api/session');
    if (signedIn() && session.csrfToken !== state.csrfToken) {
      endSession();
      await showApp(session);
    }
  } catch {
    // A 401 ended the session (api.ts); anything else: the next request tells.
  } finally {
    checking = false;
  }
}
onSessionMismatch(() => void checkSession());
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') void checkSession();
});

// ---------------------------------------------------------------- views

function route(): void {
  const audit = location.hash === '#audit';
  $('#app-view').hidden = audit;
  $('#audit-view').hidden = !audit;
  $('#nav-nodes').classList.toggle('active', !audit);
  $('#nav-audit').classList.toggle('active', audit);
  if (audit) void loadAudit(false);
}
window.addEventListener('hashchange', () => {
  if (signedIn()) route();
});

// ---------------------------------------------------------------- start

/** Longest pause before the session is asked for again after an answer that was neither it nor a 401. */
const SESSION_RETRY_MAX_MS = 8000;

/**
 * Reads the session and shows the app, or the login form on a 401. Any other answer (a proxy's 502 while
 * the server restarts, the network) says nothing of the session, which may well be valid: the form is
 * shown with the reason, and the session asked for again (1 s, 2 s, 4 s, then every 8 s) until the server
 * answers or the user signs in. Taken as signed out, a reload during a restart asked a signed-in user to
 * sign in again, without a word of why, and the batch whose dialog was open waited for it.
 */
async function start(attempt: number): Promise<void> {
  try {
    const session = await api<{ username: string; role: Role; csrfToken: string }>('/api/session');
    if (signedIn()) return; // signed in meanwhile with the form
    $('#login-error').textContent = '';
    await showApp(session);
  } catch (error) {
    if (signedIn()) return;
    // Once: shown again on each retry, the form moved the focus from the password being typed.
    if ($('#login-view').hidden) showLogin();
    if (error instanceof ApiError && error.status === 401) {
      $('#login-error').textContent = '';
      return;
    }
    $('#login-error').textContent = `${(error as Error).message} (checking your session again…)`;
    setTimeout(() => void start(attempt + 1), Math.min(1000 * 2 ** attempt, SESSION_RETRY_MAX_MS));
  }
}
void start(0);
