/** The progress client (one socket for the page) and the "reconnecting…" badge that follows its state. */
import { ProgressClient } from '@finishline/client';
import { $ } from './dom.js';
import { refreshNodesSoon } from './nodes.js';
import { progressClientOptions } from './progress-options.js';
import { onSessionEnd, sessionMismatch } from './session.js';
import { loadTasks } from './task-list.js';

const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/progress`;

function connect(): ProgressClient {
  const made = new ProgressClient(progressClientOptions(wsUrl));
  let wasOpen = false;
  made.on('state', ({ state }) => {
    // A client closed at the end of a session says nothing more (its 'closed' is not this page's).
    if (made !== client) return;
    const conn = $('#connection');
    const lost = wasOpen && (state === 'reconnecting' || state === 'connecting');
    if (state === 'open') {
      // Back after a loss: what changed meanwhile outside the watched tasks comes from the HTTP API.
      if (wasOpen && !conn.hidden) {
        void loadTasks();
        refreshNodesSoon();
        // The socket may have been closed by a sign-in in another tab (it ends this browser's previous
        // session) and reopened with the new cookie: its watches then run as that session's user while the
        // page shows the old one. Checked as a POST refused for its token is (main.ts takes a new session).
        sessionMismatch();
      }
      wasOpen = true;
    }
    conn.hidden = !lost && state !== 'closed';
    conn.textContent = state === 'closed' ? 'disconnected' : 'reconnecting…';
    conn.className = `conn ${state}`;
    const warning = $('#progress-warning');
    warning.hidden = !lost;
    warning.textContent = lost ? 'Reconnecting… the progress shown may be behind; nothing is lost.' : '';
  });
  return made;
}

export let client = connect();

// The socket was authenticated by the old session's cookie, and the server closes it only at its next session
// check (up to 10 s later): the next user's watches would go through it with the previous user's rights.
onSessionEnd(() => {
  const old = client;
  client = connect();
  void old.close();
  $('#connection').hidden = true;
  $('#progress-warning').hidden = true;
});
