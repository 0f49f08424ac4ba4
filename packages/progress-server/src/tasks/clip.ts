/**
 * Texts from workers and callers made storable: every store refuses U+0000 and unpaired surrogates
 * (`isStorableText`), and clipping must not cut a surrogate pair in two.
 *
 * @module
 */

// biome-ignore lint/suspicious/noControlCharactersInRegex: U+0000 is what the stores refuse.
const UNSTORABLE = /\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/** `text` with U+0000 and unpaired surrogates replaced by U+FFFD, clipped to `max` UTF-16 units. */
export function clip(text: string, max: number): string {
  const storable = text.replace(UNSTORABLE, '\uFFFD');
  if (storable.length <= max) return storable;
  let end = max - 1;
  const last = storable.charCodeAt(end - 1);
  // Never keep the high half of a pair whose low half is cut off.
  if (last >= 0xd800 && last <= 0xdbff) end -= 1;
  return `${storable.slice(0, end)}…`;
}
