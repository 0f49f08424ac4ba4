import { createHash } from 'node:crypto';
import { CompiledQuery, type Kysely, type QueryResult, type RawBuilder } from 'kysely';
import type { ProgressDatabase } from './schema.js';

/**
 * The store's frequent statements (appends, acks, task and event reads), compiled once per store and run
 * by name as server-side prepared statements when the store owns the connection (its `pool` option).
 *
 * Why: the append statement is about 2.5 KB of SQL. Sent as an unnamed statement, every append paid for
 * kysely building and compiling it, `pg` sending its text, and Postgres parsing and planning it again;
 * a named statement is parsed once per connection and then only bound and executed: an append alone in its
 * statement took about half the wall time, and less of the process's CPU (docs/benchmarks-history.md,
 * session 16).
 *
 * A statement is written as a kysely `sql` template whose values are {@link param} markers; it is compiled
 * once, and each run puts the arguments where the markers were, so the template stays the only place that
 * says which value goes where.
 *
 * @module
 */

/** Where an argument goes in a prepared statement: the compiled parameter that the marker became. */
class Parameter {
  readonly name: string;
  constructor(name: string) {
    this.name = name;
  }
}

/** A marker for the argument `name` of a {@link PreparedStatement}'s template. */
export function param(name: string): unknown {
  return new Parameter(name);
}

/**
 * Names of the prepared statements, by their text, for every store of this process: one name per text,
 * so a connection that two stores share never has one name for two texts (which `pg` refuses). Texts are
 * few (a handful per schema) and live as long as the process.
 */
const names = new Map<string, string>();

/**
 * The name under which `text` runs as a prepared statement, or `undefined` when it is not one of the
 * store's prepared statements. The texts compared are the strings the statements keep, whose hash V8 has
 * computed once, so the lookup is cheap however long the text.
 */
export function preparedStatementName(text: string): string | undefined {
  return names.get(text);
}

/**
 * A statement compiled once; {@link PreparedStatement.run} binds its arguments by name.
 *
 * @typeParam A - the arguments, by the names the template's markers carry.
 * @typeParam R - a row of its result.
 */
export class PreparedStatement<A extends Record<string, unknown>, R> {
  readonly #text: string;
  readonly #argumentNames: readonly (keyof A & string)[];

  /**
   * Compiles `template` with `db`'s dialect. Every value of the template must be a {@link param} marker
   * (identifiers and fixed SQL go in as `sql.id`, `sql.raw` or `sql.lit`): a plain value would be bound
   * once, at compile time, for every later run.
   */
  constructor(db: Kysely<ProgressDatabase>, template: RawBuilder<R>) {
    const compiled = template.compile(db);
    this.#argumentNames = compiled.parameters.map((value) => {
      if (!(value instanceof Parameter)) {
        throw new TypeError(`A prepared statement's values must be param() markers: ${compiled.sql}`);
      }
      return value.name as keyof A & string;
    });
    this.#text = compiled.sql;
    // Named by a digest of the text, not by a count: another copy of this module in the process (the package
    // loaded both as ESM and as CommonJS) counts from 1 too, and its stores may share the pool's connections.
    if (!names.has(this.#text)) {
      names.set(
        this.#text,
        `finishline_${createHash('sha256').update(this.#text).digest('hex').slice(0, 32)}`,
      );
    }
  }

  /** Runs the statement on `db` (a Kysely instance or a transaction) with `args`. */
  run(db: Kysely<ProgressDatabase>, args: A): Promise<QueryResult<R>> {
    const values = this.#argumentNames.map((name) => args[name]);
    return db.executeQuery(CompiledQuery.raw(this.#text, values) as CompiledQuery<R>);
  }
}
