import { readFileSync } from 'node:fs';
import { request as httpRequest, validateHeaderName, validateHeaderValue } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { parseArgs } from 'node:util';
import { ErrorCode, isProgressError } from '@finishline/core';
import { assertTaskId, nearestName } from '@finishline/core/internal';
import {
  CLI_EXIT_CODES,
  clearDrawn,
  exitCodeOf,
  finalLine,
  jsonLine,
  lineColumns,
  printable,
  progressLine,
} from './cli-render.js';
import type { WebSocketConstructorLike } from './options.js';
import { ProgressClient } from './progress-client.js';
import { describeSocketError } from './socket-platform.js';

/**
 * `finishline watch <url> <taskId>`: follows one task from a terminal and exits with its final status.
 *
 * @module
 */

/** Where {@link runCli} writes, and what it connects with; the bin passes the process's own. */
export interface CliIo {
  /**
   * `columns`: a terminal's width, which the progress line is cut to. `on('error')`: a write that failed
   * (the reader of a pipe went away) ends the watch with exit 141 instead of crashing the bin.
   */
  stdout: {
    write(text: string): unknown;
    isTTY?: boolean;
    columns?: number | undefined;
    on?(event: 'error', listener: (error: Error) => void): unknown;
  };
  /** `on('error')`: a failed write turns later ones into no-ops; the watch goes on. */
  stderr: { write(text: string): unknown; on?(event: 'error', listener: (error: Error) => void): unknown };
  /** The WebSocket implementation: `ws` when installed, else Node's built-in. */
  WebSocket: WebSocketConstructorLike | undefined;
  /** Stops the watch: Ctrl-C, or SIGTERM when aborted with the reason `'SIGTERM'` (exit 143, not 130). */
  signal?: AbortSignal;
  /** The environment, for `FINISHLINE_TOKEN`, `FINISHLINE_HEADERS` and `TERM`; the bin passes `process.env`. */
  env?: Readonly<Record<string, string | undefined>>;
}

/**
 * The longest delay `setTimeout` takes: above it Node warns (TimeoutOverflowWarning, on stderr) and fires after
 * 1 ms, so an --interval-ms of a month printed every state, each with a warning. Longer waits are re-armed.
 */
const MAX_TIMER_MS = 2 ** 31 - 1;

const USAGE = `usage: finishline watch <url> <taskId> [options]

  <url>                 the server's WebSocket URL (ws://host:3000/progress) or its http(s) URL
  --token <token>       credential sent in the first frame and as a bearer token over HTTP
                        (default: $FINISHLINE_TOKEN, which other users cannot read in the process list)
  --header <name: value>  upgrade and HTTP header, repeatable (needs the "ws" package); also
                        $FINISHLINE_HEADERS, one "name: value" a line (a --header of the same name wins)
  --timeout-ms <ms>     give up after this long, more than 0 (exit 5; default: no limit)
  --interval-ms <ms>    without a terminal (or with --json), the least time between two progress lines
                        (default 1000)
  --json                one JSON object a line instead (never a bar): the task's state as it changes, at
                        most one per --interval-ms, and its final state ("finished": true) when it ends
  --version, -v         print the version of @finishline/client and exit
  --help, -h            print this usage and exit

A server that is down (connection refused) or answers the upgrade with HTTP 5xx, 408 or 429 is retried
(until --timeout-ms); an upgrade answered with another 3xx or 4xx (a wrong path's 404) ends the watch.

exit codes: 0 completed, 1 failed, 2 cancelled, 3 interrupted, 4 the watch could not go on
(forbidden, task_not_found, unauthenticated, <url> not the WebSocket endpoint), 5 timeout, 64 bad
command line, 130 stopped (Ctrl-C), 143 stopped (SIGTERM), 141 the output was closed (| head),
74 the output could not be written (a full disk)
`;

/** Runs the CLI with `argv` (without `node` and the script); resolves with the exit code. */
export async function runCli(argv: readonly string[], cliIo: CliIo): Promise<number> {
  // `finishline watch … | head -1`: once the reader is gone every write fails with EPIPE, emitted as an
  // 'error' event that, unhandled, crashed the bin with a stack trace and exit 1, which reads as "the task
  // failed". A closed stdout stops the watch (nobody reads it any more), silently, as SIGPIPE would.
  // The listeners stay: a write's error can come after this function has returned.
  const outputClosed = new AbortController();
  let stderrClosed = false;
  /** A write failed otherwise than by EPIPE (a full disk, /dev/full, a terminal gone): exit 74, not 141. */
  let outputFailed = false;
  cliIo.stdout.on?.('error', (error: Error & { code?: unknown }) => {
    if (outputClosed.signal.aborted) return;
    outputClosed.abort();
    if (error.code === 'EPIPE') return;
    outputFailed = true;
    // Said: stopping in silence hides why.
    if (!stderrClosed) cliIo.stderr.write(`finishline: cannot write the output: ${error.message}\n`);
  });
  cliIo.stderr.on?.('error', () => {
    stderrClosed = true;
  });
  const io: CliIo = {
    ...cliIo,
    stdout: {
      write: (text) => (outputClosed.signal.aborted ? false : cliIo.stdout.write(text)),
      ...(cliIo.stdout.isTTY === undefined ? {} : { isTTY: cliIo.stdout.isTTY }),
      // A getter: a terminal's width changes while the watch runs.
      get columns() {
        return cliIo.stdout.columns;
      },
    },
    stderr: { write: (text) => (stderrClosed ? false : cliIo.stderr.write(text)) },
    signal:
      cliIo.signal === undefined ? outputClosed.signal : AbortSignal.any([cliIo.signal, outputClosed.signal]),
  };
  const code = await watchCli(argv, cliIo, io, outputClosed.signal);
  // What was written last (the final state, the usage of --help) may still fail: a file's or a terminal's
  // write reports its error a tick later, a pipe's once drained. Until 7 December 2026 such a failure came
  // after the exit code was decided, and `finishline watch … --json > out.jsonl && next` (a full disk,
  // /dev/full) went on with exit 0 and no output.
  await flushed(cliIo.stdout, outputClosed.signal);
  return outputFailed ? CLI_EXIT_CODES.ioError : code;
}

/**
 * Resolves once `stdout` has written what it holds (or failed, or closed), and a turn later: the turn its
 * 'error' comes in when the write failed at once.
 */
async function flushed(stdout: CliIo['stdout'], outputClosed: AbortSignal): Promise<void> {
  if (outputClosed.aborted) return; // failed already: nothing more to learn
  const stream = stdout as { writableLength?: unknown; once?(event: string, listener: () => void): unknown };
  if (typeof stream.writableLength === 'number' && stream.writableLength > 0 && stream.once !== undefined) {
    const once = stream.once.bind(stream);
    await new Promise<void>((resolve) => {
      once('drain', resolve);
      once('close', resolve);
      outputClosed.addEventListener('abort', () => resolve(), { once: true });
    });
  }
  await new Promise((resolve) => setImmediate(resolve));
}

/** {@link runCli} once its output is set up: `io` writes nowhere once `outputClosed` is aborted. */
async function watchCli(
  argv: readonly string[],
  cliIo: CliIo,
  io: CliIo,
  outputClosed: AbortSignal,
): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(argv, cliIo.env);
  } catch (error) {
    io.stderr.write(`finishline: ${printable((error as Error).message)}\n\n${USAGE}`);
    return CLI_EXIT_CODES.usage;
  }
  if (parsed === 'help') {
    io.stdout.write(USAGE);
    return 0;
  }
  if (parsed === 'version') {
    io.stdout.write(`${packageVersion()}\n`);
    return 0;
  }
  const { url, taskId, headers, timeoutMs, intervalMs, json } = parsed;
  // A command line is readable by every local user (ps, /proc/<pid>/cmdline): the environment is not.
  // Empty or blank, it is no token (`FINISHLINE_TOKEN=` unsets it; a docker --env-file keeps the space of
  // `FINISHLINE_TOKEN= `): a blank one was sent as the credential, and a refusal left out the hint below.
  const envToken = withoutLineEnd(io.env?.FINISHLINE_TOKEN);
  const token = parsed.token ?? (envToken?.trim() === '' ? undefined : envToken);
  if (io.WebSocket === undefined) {
    io.stderr.write('finishline: no WebSocket implementation: npm install ws (or use Node 22 or newer)\n');
    return CLI_EXIT_CODES.usage;
  }
  let client: ProgressClient;
  try {
    client = new ProgressClient({
      url,
      WebSocket: io.WebSocket,
      headers,
      ...(token === undefined ? {} : { token }),
    });
  } catch (error) {
    io.stderr.write(`finishline: ${printable((error as Error).message)}\n`);
    return CLI_EXIT_CODES.usage;
  }
  // --json is for a program, even on a terminal: one line per state, never redrawn in place. A terminal that
  // cannot move its cursor (TERM=dumb: Emacs's shell, …) showed the redraw's `\x1b[2K` as text before every
  // state on one ever longer line: it gets the lines a log gets.
  const tty = !json && io.stdout.isTTY === true && io.env?.TERM !== 'dumb';
  /** On a terminal: a progress line is on the screen without its newline (the next one redraws it). */
  let lineOpen = false;
  /** The columns of that line, drawn at the width the terminal had then: see clearDrawn. */
  let drawnColumns = 0;
  // The last error reported. What ends the client is said twice: as its 'error' and as the watch's error
  // ("The server refused the client: closed by server (4001: Invalid credentials)"); until 7 December 2026
  // the server's error frame before that close ("Invalid credentials") came first. One that quotes the last
  // says it again.
  let reported: string | undefined;
  const repeats = (message: string) =>
    reported !== undefined && reported !== '' && message.includes(reported);
  const report = (message: string) => {
    // On a terminal the bar's line is ended first: the error ran on from it ("0/3 0%finishline: …").
    if (lineOpen) io.stdout.write('\n');
    lineOpen = false;
    reported = message;
    // The message quotes the server (an error frame's text, a close reason): an escape sequence in it
    // drove the operator's terminal (retitled it, cleared it, …) as printed.
    io.stderr.write(`finishline: ${printable(message)}\n`);
  };
  // An upgrade answered with a redirect or a client error (404 on a wrong path; 400 or 426 from an HTTP
  // endpoint that is not the WebSocket one) will be answered so again. The client retries it as any failed
  // attempt (its documented behaviour), and until 8 December 2026 so did the CLI, for ever without
  // --timeout-ms: `finishline watch … && next` hung. It gives up on it (exit 4). 408 and 429 say "later",
  // and 5xx (a 502 or 503 during a deploy), like a refused connection (a server down), are still retried.
  // (401 and 403 end the client already.) Node's built-in WebSocket (undici) tells no status: the same
  // "Received network error or non-101 status code" for a refused connection and for a 404, and until
  // 8 December 2026 the CLI retried a wrong URL for ever there. After such a failure it asks the URL itself
  // (probeUpgrade): the status an upgrade request over HTTP is answered with is the one the socket got.
  const stopWatch = new AbortController();
  let wrongEndpoint: string | undefined;
  const endsWatch = (status: number | undefined, detail: string | undefined) => {
    if (status === undefined || status < 300 || status >= 500 || status === 408 || status === 429)
      return false;
    // Without the URL's query string, which may hold a token (as the client's own message leaves it out).
    wrongEndpoint ??= `cannot watch task ${taskId}: ${url.split('?', 1)[0]} is not the server's WebSocket endpoint: ${detail}`;
    stopWatch.abort();
    return true;
  };
  let probing = false;
  // Connection problems are reported, and the client goes on retrying until the deadline.
  // The same problem again is said again: the client is still retrying.
  client.on('error', (error) => {
    const refused = isProgressError(error, ErrorCode.Unreachable)
      ? describeSocketError({ error: error.cause })
      : undefined;
    if (endsWatch(refused?.status, refused?.detail)) return;
    if (error.message === reported || !repeats(error.message)) report(error.message);
    // The implementation's error without a status or a network error's code (which `ws` gives): what failed
    // is not known. Not after a close before hello or a connect timeout (no error: the upgrade was
    // accepted). One probe at a time.
    const cause = error.cause;
    const known = !(cause instanceof Error) || (cause as { code?: unknown }).code !== undefined;
    if (refused === undefined || refused.status !== undefined || known || probing) return;
    probing = true;
    void probeUpgrade(url, stopWatch.signal).then((status) => {
      probing = false;
      if (status === undefined || stopWatch.signal.aborted) return;
      endsWatch(status, describeSocketError({ message: `Unexpected server response: ${status}` }).detail);
    });
  });
  let printed = '';
  let pending = '';
  let lastAt = 0;
  // Not a terminal: a line that came within --interval-ms of the previous one is printed when the
  // interval has passed, so that a log does not go on showing an older state while the task works on.
  let trailing: ReturnType<typeof setTimeout> | undefined;
  const printPending = () => {
    trailing = undefined;
    if (pending === printed) return;
    io.stdout.write(`${pending}\n`);
    printed = pending;
    lastAt = Date.now();
  };
  const holdFor = (ms: number) => {
    trailing =
      ms > MAX_TIMER_MS
        ? setTimeout(() => holdFor(ms - MAX_TIMER_MS), MAX_TIMER_MS)
        : setTimeout(printPending, ms);
  };
  const watch = client.watch(taskId);
  const unsubscribe = watch.subscribe(() => {
    const state = watch.getSnapshot();
    if (state.finished) return;
    // Nothing is known of the task before its first state: no object to give a program.
    // Nor a line for a log: "waiting for the task…" came before the error of a watch that failed.
    if (!tty && state.progress === null) return;
    const line = json ? jsonLine(state) : progressLine(state, tty ? io.stdout.columns : undefined);
    if (tty) {
      io.stdout.write(`${clearDrawn(lineOpen ? drawnColumns : 0, io.stdout.columns)}${line}`);
      lineOpen = true;
      drawnColumns = lineColumns(line);
      return;
    }
    pending = line;
    if (trailing !== undefined) return;
    const wait = lastAt + intervalMs - Date.now();
    if (wait <= 0) printPending();
    else holdFor(wait);
  });
  try {
    const state = await watch.done({
      ...(timeoutMs === undefined ? {} : { timeoutMs }),
      signal: io.signal === undefined ? stopWatch.signal : AbortSignal.any([io.signal, stopWatch.signal]),
    });
    io.stdout.write(
      json
        ? `${jsonLine(state)}\n`
        : `${tty ? clearDrawn(lineOpen ? drawnColumns : 0, io.stdout.columns) : ''}${progressLine(state, tty ? io.stdout.columns : undefined)}\n${finalLine(state)}\n`,
    );
    return exitCodeOf(state);
  } catch (error) {
    // (runCli makes it 74 when the write failed otherwise than by EPIPE.)
    if (outputClosed.aborted) return CLI_EXIT_CODES.outputClosed;
    // Stopped by a signal, the wait's own error ("watch.done: the wait for task … was aborted") named the
    // library's API, and "aborted" read as the task's end: the CLI only stops watching, cancels nothing.
    // --timeout-ms likewise ("watch.done: task … did not finish within … ms").
    const timedOut = wrongEndpoint === undefined && isProgressError(error, ErrorCode.Timeout);
    const stoppedBy =
      wrongEndpoint === undefined &&
      !timedOut &&
      cliIo.signal?.aborted === true &&
      (cliIo.signal.reason === 'SIGTERM' ? 'SIGTERM' : 'Ctrl-C');
    const gaveUp =
      timedOut && timeoutMs !== undefined
        ? `task ${taskId} did not finish within ${timeoutMs} ms (--timeout-ms)`
        : stoppedBy
          ? `stopped watching task ${taskId} (${stoppedBy})`
          : undefined;
    // A wrong URL: exit 4, said once (not the aborted wait's error).
    if (wrongEndpoint !== undefined) report(wrongEndpoint);
    else if (gaveUp !== undefined) report(`${gaveUp}: only the watch stopped, the task was not cancelled`);
    else if (!repeats((error as Error).message)) report((error as Error).message);
    if (lineOpen) io.stdout.write('\n');
    // Refused for want of a credential when none was given: the client's message says what the server
    // did (401, or 4004 for the auth frame it waited for), not which flag supplies one.
    if (
      isProgressError(error, ErrorCode.Unauthenticated) &&
      token === undefined &&
      Object.keys(headers).length === 0
    ) {
      io.stderr.write(
        'finishline: no credential was given: pass --token <t> (or set FINISHLINE_TOKEN), or --header "cookie: …" (or set FINISHLINE_HEADERS)\n',
      );
    }
    if (timedOut) return CLI_EXIT_CODES.timeout;
    // Ctrl-C was exit 4, which a script reads as "the server refused the watch"; SIGTERM was 130, which
    // says Ctrl-C to a script or a supervisor that tells the two apart.
    if (stoppedBy) return stoppedBy === 'SIGTERM' ? CLI_EXIT_CODES.terminated : CLI_EXIT_CODES.stopped;
    return CLI_EXIT_CODES.watchFailed;
  } finally {
    // Before the close: the watch it ends with `closed` tells its subscriber, whose line would come
    // after the error, or wait for --interval-ms on a timer that keeps the process from exiting.
    unsubscribe();
    clearTimeout(trailing);
    stopWatch.abort(); // and with it a probe still waiting, whose socket would keep the process alive
    await client.close();
  }
}

/** How long {@link probeUpgrade} waits for the server's answer. */
const PROBE_TIMEOUT_MS = 5000;

/**
 * The HTTP status the server answers a WebSocket upgrade of `url` with (its query string included: a
 * server may take its token there), over node:http(s); `undefined` when it accepts it (101, the socket
 * closed at once), or cannot be asked (refused, a TLS error, no answer within PROBE_TIMEOUT_MS, `signal`).
 * For Node's built-in WebSocket, which tells none.
 */
function probeUpgrade(url: string, signal: AbortSignal): Promise<number | undefined> {
  const target = new URL(url);
  target.protocol = target.protocol.replace(/^ws/, 'http');
  const request = target.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve) => {
    const req = request(target, {
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': 'ZmluaXNobGluZSBwcm9iZQ==',
      },
      signal: AbortSignal.any([signal, AbortSignal.timeout(PROBE_TIMEOUT_MS)]),
    });
    req.on('upgrade', (_response, socket) => {
      socket.destroy();
      resolve(undefined);
    });
    req.on('response', (response) => {
      response.destroy();
      resolve(response.statusCode);
    });
    req.on('error', () => resolve(undefined));
    req.end();
  });
}

const CLI_OPTIONS = {
  token: { type: 'string' },
  header: { type: 'string', multiple: true },
  'timeout-ms': { type: 'string' },
  'interval-ms': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'v' },
} as const;

/**
 * Node's parseArgs, with an unknown option named with the nearest known one, as the library's own options
 * are: its message (`Unknown option '--timeout'. To specify a positional argument starting with a '-', …`)
 * explained a case no one is in and left `--timeout-ms` to the usage below it.
 */
function parseCommandLine(argv: readonly string[]) {
  try {
    return parseArgs({ args: [...argv], allowPositionals: true, options: CLI_OPTIONS });
  } catch (error) {
    const name = /^Unknown option '--([^']+)'/.exec((error as Error).message)?.[1];
    if (name === undefined) throw error;
    const nearest = nearestName(name, Object.keys(CLI_OPTIONS));
    throw new Error(`unknown option --${name}${nearest ? ` (did you mean --${nearest}?)` : ''}`);
  }
}

function parse(argv: readonly string[], env: CliIo['env']) {
  const { values, positionals } = parseCommandLine(argv);
  if (values.help === true) return 'help' as const;
  if (values.version === true) return 'version' as const;
  const [command, url, taskId, ...rest] = positionals;
  if (command !== 'watch') throw new Error(unknownCommand(command));
  if (url === undefined || taskId === undefined) throw new Error('watch needs <url> and <taskId>');
  // Counted, not echoed: the usual cause is a --header whose value was not quoted, which leaves the
  // credential in it (`--header cookie: sid=…`) as an extra argument, and stderr ends up in CI logs.
  if (rest.length > 0)
    throw new Error(
      `${rest.length} unexpected argument${rest.length === 1 ? '' : 's'} after <taskId> (not shown: one may be a credential); quote a --header whole: --header "cookie: sid=…"`,
    );
  // A host and port without a scheme is the usual slip: the client read `localhost:3000/progress` as a URL
  // of the scheme "localhost:" ("url must be a ws: or wss: URL, got localhost:") and `127.0.0.1:3000/…` as
  // no URL at all ("url is not a valid absolute URL"), though it takes http(s) URLs too. Not echoed: a URL may carry
  // a token in its query.
  if (!/^(ws|http)s?:\/\//i.test(url))
    throw new Error(
      '<url> must start with ws://, wss://, http:// or https:// (ws://localhost:3000/progress)',
    );
  // A #fragment (pasted from a browser's address bar, or `#` in an unquoted token) makes the WebSocket
  // constructor throw, `ws` and Node's built-in alike: the client reported "Could not create a WebSocket"
  // and retried it for ever (or until --timeout-ms), so that `finishline watch … && next` never went on.
  // Not echoed either.
  if (url.includes('#')) throw new Error('<url> must not have a #fragment: a WebSocket URL cannot carry one');
  assertTaskId(taskId); // an invalid id is a bad command line (64), not a crash of the bin
  // `--token "$TOKEN"` with TOKEN unset: the client takes an empty token for one not there yet and retries
  // ("The token provider failed") for ever.
  const token = withoutLineEnd(values.token);
  if (token !== undefined && token.trim() === '')
    throw new Error('--token is empty: pass the token, or leave --token out to use $FINISHLINE_TOKEN');
  // The environment's first, so that a --header of the same name wins, as --token wins over FINISHLINE_TOKEN.
  const headers: Record<string, string> = {};
  for (const line of (env?.FINISHLINE_HEADERS ?? '').split(/\r?\n/)) {
    if (line.trim() === '') continue;
    const [name, value] = header(line, 'FINISHLINE_HEADERS');
    headers[name] = value;
  }
  for (const flag of values.header ?? []) {
    const [name, value] = header(flag, '--header');
    headers[name] = value;
  }
  const number = (name: string, value: string | undefined, least: '>= 0' | '> 0'): number | undefined => {
    if (value === undefined) return undefined;
    // Number('') and Number(' ') are 0: an unset shell variable ("--timeout-ms $T") gave up at once.
    const n = value.trim() === '' ? Number.NaN : Number(value);
    if (!Number.isFinite(n) || n < 0 || (least === '> 0' && n === 0))
      throw new Error(
        `--${name} must be a number of milliseconds ${least}${least === '> 0' ? ' (leave it out for no limit)' : ''}`,
      );
    return n;
  };
  return {
    url,
    taskId,
    token,
    headers,
    // Not 0: the wait gave up (exit 5) before any answer of the server, a task completed long ago included.
    // "Give up after this long" has no sense for 0; nor is 0 "no limit", which leaving it out already is.
    timeoutMs: number('timeout-ms', values['timeout-ms'], '> 0'),
    intervalMs: number('interval-ms', values['interval-ms'], '>= 0') ?? 1000,
    json: values.json === true,
  };
}

/**
 * The message for a first argument that is not `watch`. Quoted only when it is a misspelt `watch` (a word of
 * letters near it): the usual other cause is a command line without `watch` (`finishline ws://…?token=… t1`)
 * or a `--header cookie: sid=…` left unquoted before it, and the argument, quoted whole, put the URL's token
 * or the cookie into stderr, which ends up in CI logs.
 */
function unknownCommand(command: string | undefined): string {
  if (command === undefined) return 'unknown command (none): the first argument must be watch';
  if (/^[a-z]{1,12}$/i.test(command) && nearestName(command, ['watch']) === 'watch')
    return `unknown command "${command}" (did you mean watch?)`;
  return 'unknown command (not shown: it may be a URL or a credential): the first argument must be watch';
}

/**
 * The version of the package this file came in. Read when asked, not written into the build: the manifest is
 * one folder up from src/cli-main.ts in the repository and from the bundled dist/cli.js, in a clone and in an
 * installed package alike, and npm always packs it.
 */
function packageVersion(): string {
  const manifest = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return manifest.version;
}

/**
 * A token without the line break that ends it: `--token "$(cat token.txt)"` (or FINISHLINE_TOKEN set so) drops
 * a file's trailing newline but not the CR before it when the file was saved on Windows, and `token\r` was
 * sent as is and refused ("Invalid credentials") though it looked right. Only CR and LF at the end: anything
 * else is the token's own.
 */
function withoutLineEnd(token: string | undefined): string | undefined {
  return token?.replace(/[\r\n]+$/, '');
}

/** One `name: value` of a --header or a line of FINISHLINE_HEADERS (`source`), checked; the name in lower case. */
function header(text: string, source: '--header' | 'FINISHLINE_HEADERS'): [name: string, value: string] {
  const colon = text.indexOf(':');
  // Not echoed: a header is a credential more often than not (cookie, authorization), and stderr
  // ends up in CI logs.
  if (colon <= 0)
    throw new Error(
      `${source === '--header' ? '--header' : 'FINISHLINE_HEADERS: each line'} must be "name: value" (one was given without a name and a colon)`,
    );
  const name = text.slice(0, colon).trim().toLowerCase();
  const value = text.slice(colon + 1).trim();
  // What the upgrade request would refuse: the socket could not be created, and the client retried
  // that for ever ("Could not create a WebSocket" until --timeout-ms, or Ctrl-C) instead of exit 64.
  // Nor is an invalid name echoed: it is everything before the first colon, and a name is invalid mostly when
  // that colon was not the one after it (`--header "x-api-key id:secret"`, `"cookie sid=s:abc"`): it held
  // the credential's first part.
  try {
    validateHeaderName(name);
  } catch {
    throw new Error(
      `${source}: what comes before the first ":" is not a valid header name (not shown: it may hold a credential; a colon left out after the name?)`,
    );
  }
  try {
    validateHeaderValue(name, value);
  } catch {
    throw new Error(
      `${source}: the value of "${name}" holds a character a header cannot carry (a line break, …)`,
    );
  }
  // `--header "cookie: $SID"` with SID unset: sent empty, the server refused the watch for want of a
  // credential (exit 4) while the hint naming --token and --header stayed out, since a header was given.
  if (value === '') throw new Error(`${source}: "${name}" has no value (an unset shell variable?)`);
  return [name, value];
}
