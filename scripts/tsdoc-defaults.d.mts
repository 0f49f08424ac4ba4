/** The `@default` each option's TSDoc states in `source`, by option name. */
export declare function tsdocDefaults(source: string): Map<string, string>;

/** `value` as the docs write a default: `5000`, `'same-origin'`, `false`, `{ initialDelayMs: 100, … }`. */
export declare function defaultLiteral(value: unknown): string;

/**
 * Compares every plain default of `defaults` with the `@default` the TSDoc of `source` states: how many
 * were compared, and a line for each that differs.
 */
export declare function compareTsdocDefaults(
  source: string,
  defaults: Readonly<Record<string, unknown>>,
): { checked: number; wrong: string[] };
