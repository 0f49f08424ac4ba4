import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

/**
 * Every interface the public types name by a property is itself exported: `ProgressDatabase` (which a
 * caller passes to `Kysely<…>` to query the store's schema) named `PurgedTable` and `MetaTable`, which were
 * not, so a caller who names the tables in their own database type (`Kysely<AppDb & ProgressDatabase>`, or a
 * typed query of the epoch) could not import their types, and the API reference showed them unresolved.
 */

const src = join(dirname(fileURLToPath(import.meta.url)), '..', 'src');

describe('the public types', () => {
  it('name by their properties only interfaces and type aliases the package exports', () => {
    const entry = join(src, 'index.ts');
    const program = ts.createProgram([entry], {
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      target: ts.ScriptTarget.ES2022,
      noEmit: true,
      skipLibCheck: true,
    });
    const checker = program.getTypeChecker();
    const file = program.getSourceFile(entry);
    const module = file === undefined ? undefined : checker.getSymbolAtLocation(file);
    if (module === undefined) throw new Error('src/index.ts did not load');
    const exported = checker.getExportsOfModule(module).map((symbol) => checker.getAliasedSymbol(symbol));
    const exportedNames = new Set(exported.map((symbol) => symbol.getName()));
    const unexported = new Set<string>();
    for (const symbol of exported) {
      if (!(symbol.flags & ts.SymbolFlags.Interface)) continue;
      for (const property of checker.getDeclaredTypeOfSymbol(symbol).getProperties()) {
        const declaration = property.valueDeclaration;
        if (
          declaration === undefined ||
          !ts.isPropertySignature(declaration) ||
          declaration.type === undefined
        )
          continue;
        const named = declaration.type;
        if (!ts.isTypeReferenceNode(named)) continue;
        const local = checker.getSymbolAtLocation(named.typeName);
        // Through an import to the declaration.
        const target =
          local !== undefined && local.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(local) : local;
        const declared = target?.declarations?.[0];
        // Only this package's own types: kysely's and core's are exported by their packages.
        if (
          target === undefined ||
          declared === undefined ||
          !declared.getSourceFile().fileName.startsWith(src)
        )
          continue;
        if (!exportedNames.has(target.getName()))
          unexported.add(`${symbol.getName()}.${property.getName()}: ${target.getName()}`);
      }
    }
    expect([...unexported]).toEqual([]);
  });
});
