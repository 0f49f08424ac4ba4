/**
 * The drift check between an options interface's TSDoc `@default`s and the defaults its code applies,
 * shared by the packages' option tests (server, client, SQLite and Postgres stores).
 */

/**
 * The `@default` each option's TSDoc states in `source` (`/** … @default 5000 *\/ authTimeoutMs?:`), by
 * option name.
 */
export function tsdocDefaults(source) {
  const stated = new Map();
  for (const [, doc, name] of source.matchAll(/\/\*\*((?:(?!\*\/)[\s\S])*)\*\/\s*(\w+)\?:/g)) {
    const found = /@default (.*)/.exec(doc);
    if (found) stated.set(name, found[1].trim());
  }
  return stated;
}

/** `value` as the docs write a default: `5000`, `'same-origin'`, `false`, `{ initialDelayMs: 100, … }`. */
export function defaultLiteral(value) {
  if (typeof value === 'string') return `'${value}'`;
  if (typeof value === 'object' && value !== null) {
    const entries = Object.entries(value).map(([key, entry]) => `${key}: ${defaultLiteral(entry)}`);
    return entries.length === 0 ? '{}' : `{ ${entries.join(', ')} }`;
  }
  return String(value);
}

/**
 * Compares every default of `defaults` that is a plain value with the `@default` the TSDoc of `source`
 * states: the literal, then words at most (`5000`, `'normal'`, not `50000`). A default that is a function,
 * or an object the TSDoc names in words, is left out.
 */
export function compareTsdocDefaults(source, defaults) {
  const stated = tsdocDefaults(source);
  const wrong = [];
  let checked = 0;
  for (const [name, value] of Object.entries(defaults)) {
    const doc = stated.get(name);
    if (typeof value === 'function' || value === undefined) continue;
    if (typeof value === 'object' && value !== null && !doc?.startsWith('{')) continue;
    const text = defaultLiteral(value);
    if (doc === undefined || !doc.startsWith(text) || /^[\w.]/.test(doc.slice(text.length))) {
      wrong.push(`${name}: the code has ${text}, the TSDoc says ${doc ?? 'nothing'}`);
    }
    checked += 1;
  }
  return { checked, wrong };
}
