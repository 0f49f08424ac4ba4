// Checks that every type a package's public interfaces name by a property is itself exported by that
// package: `ProgressDatabase` of @finishline/postgres named `MetaTable` and `PurgedTable`, which were not,
// so a caller naming the store's tables in their own Kysely database type could not import them, and the
// API reference showed them unresolved. TypeDoc's own `notExported` validation did not report them.
// Reads the entry points of typedoc.json (the public API); a package's own types only (kysely's and
// core's are exported by their packages), exported by any entry of the package. Exits non-zero on any.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import ts from 'typescript';

const root = new URL('..', import.meta.url).pathname;
const { entryPoints } = JSON.parse(readFileSync(join(root, 'typedoc.json'), 'utf8'));
const entries = entryPoints.map((entry) => join(root, entry));
const program = ts.createProgram(entries, {
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  target: ts.ScriptTarget.ES2022,
  strict: true,
  noEmit: true,
  skipLibCheck: true,
});
const checker = program.getTypeChecker();

/** The `src/` folder of the package `file` belongs to. */
function packageSource(file) {
  const at = file.lastIndexOf('/src/');
  return at < 0 ? dirname(file) : file.slice(0, at + '/src/'.length);
}

/** What `entry` exports, through its re-exports to the declarations. */
function exportsOf(entry) {
  const file = program.getSourceFile(entry);
  const module = file === undefined ? undefined : checker.getSymbolAtLocation(file);
  if (module === undefined) throw new Error(`${entry} did not load`);
  return checker
    .getExportsOfModule(module)
    .map((symbol) => (symbol.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(symbol) : symbol));
}

/** Every package's exports, by its `src/` folder. */
const exportedByPackage = new Map();
for (const entry of entries) {
  const names = exportedByPackage.get(packageSource(entry)) ?? new Set();
  for (const symbol of exportsOf(entry)) names.add(symbol);
  exportedByPackage.set(packageSource(entry), names);
}

/** Marked `@internal`: left out of the API reference (typedoc.json's `excludeInternal`), not public. */
function isInternal(symbol) {
  return (symbol.declarations ?? []).some((declaration) => /@internal\b/.test(declaration.getFullText()));
}

/** `Interface.property: Type` for each property of an exported interface typed by an unexported own type. */
function unexportedNamedTypes(entry) {
  const src = packageSource(entry);
  const exported = exportsOf(entry);
  const packageExports = exportedByPackage.get(src);
  const found = [];
  for (const symbol of exported) {
    if (!(symbol.flags & ts.SymbolFlags.Interface) || isInternal(symbol)) continue;
    for (const property of checker.getDeclaredTypeOfSymbol(symbol).getProperties()) {
      const declaration = property.valueDeclaration;
      if (declaration === undefined || !ts.isPropertySignature(declaration)) continue;
      const named = declaration.type;
      if (named === undefined || !ts.isTypeReferenceNode(named)) continue;
      const local = checker.getSymbolAtLocation(named.typeName);
      const target =
        local !== undefined && local.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(local) : local;
      const declared = target?.declarations?.[0];
      // A type parameter is the interface's own, not a type to import.
      if (target === undefined || declared === undefined || target.flags & ts.SymbolFlags.TypeParameter)
        continue;
      if (!declared.getSourceFile().fileName.startsWith(src)) continue;
      if (!packageExports.has(target))
        found.push(`${symbol.getName()}.${property.getName()}: ${target.getName()}`);
    }
  }
  return found;
}

/** True when a type node lets `undefined` through: `T | undefined`, `unknown`, `any`. */
function takesUndefined(node) {
  if (node === undefined) return true;
  if (node.kind === ts.SyntaxKind.UnknownKeyword || node.kind === ts.SyntaxKind.AnyKeyword) return true;
  if (node.kind === ts.SyntaxKind.UndefinedKeyword) return true;
  if (ts.isParenthesizedTypeNode(node)) return takesUndefined(node.type);
  return ts.isUnionTypeNode(node) && node.types.some(takesUndefined);
}

/**
 * `Interface.option` for each optional property of an exported `…Options` interface whose type does not
 * say `| undefined`. Every options resolver takes `undefined` as "use the default", but under
 * `exactOptionalPropertyTypes` (which this repository uses, as do strict consumers) `{ token:
 * process.env.TOKEN }` did not compile against `token?: TokenSource`.
 */
function optionsRefusingUndefined(entry) {
  const src = packageSource(entry);
  const found = [];
  for (const symbol of exportsOf(entry)) {
    if (!(symbol.flags & ts.SymbolFlags.Interface) || isInternal(symbol)) continue;
    if (!symbol.getName().endsWith('Options')) continue;
    for (const declaration of symbol.declarations ?? []) {
      if (!declaration.getSourceFile().fileName.startsWith(src) || !ts.isInterfaceDeclaration(declaration))
        continue;
      for (const member of declaration.members) {
        if (!ts.isPropertySignature(member) || member.questionToken === undefined) continue;
        if (!takesUndefined(member.type)) found.push(`${symbol.getName()}.${member.name.getText()}`);
      }
    }
  }
  return found;
}

let failed = false;
for (const entry of entries) {
  const found = unexportedNamedTypes(entry);
  if (found.length === 0) continue;
  failed = true;
  console.error(`${entry.slice(root.length)} names types it does not export:\n  ${found.join('\n  ')}`);
}
for (const entry of entries) {
  const found = optionsRefusingUndefined(entry);
  if (found.length === 0) continue;
  failed = true;
  console.error(
    `${entry.slice(root.length)} has options that do not take undefined (add \`| undefined\`):\n  ${found.join('\n  ')}`,
  );
}
if (failed) process.exit(1);
console.log(
  `public types ok: ${entries.length} entry points name only types they export, and every optional option takes undefined`,
);
