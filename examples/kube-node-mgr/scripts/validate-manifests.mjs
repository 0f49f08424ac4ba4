// Validates deploy/ offline, as far as anything can without a cluster.
//
// `kubectl apply --dry-run=client` cannot run here: even a client-side dry run asks an API server for its
// discovery documents (to map kinds to resources) and, to validate, for its OpenAPI schema; no cluster is
// reachable from this machine. So instead:
//   1. `kubectl kustomize deploy/` renders the kustomization with the real kubectl (no server needed), with
//      secret.example.yaml standing in for the secret.yaml an operator writes;
//   2. every rendered object is validated against the JSON schemas that the `kubernetes-models` package
//      generates from the Kubernetes OpenAPI spec (types, required fields, formats, enums);
//   3. unknown fields, which those schemas allow but `kubectl --validate=strict` rejects, are found by
//      TypeScript's excess-property check against the same package's generated types.
// The two npm packages are pinned and installed into a scratch folder, not into the project.
// Usage: node scripts/validate-manifests.mjs [folder, default deploy/]   (exits non-zero if any is invalid)
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const example = fileURLToPath(new URL('..', import.meta.url));
const repo = path.resolve(example, '../..');
const deploy = path.resolve(process.argv[2] ?? path.join(example, 'deploy'));
const tools = path.join(example, '.tmp', 'manifest-tools');
const PACKAGES = ['kubernetes-models@5.1.0', 'yaml@2.9.1'];

const out = (text) => process.stdout.write(`${text}\n`);
const run = (file, args, options = {}) => execFileSync(file, args, { encoding: 'utf8', ...options });

if (!existsSync(path.join(tools, 'node_modules', 'kubernetes-models'))) {
  mkdirSync(tools, { recursive: true });
  writeFileSync(path.join(tools, 'package.json'), '{ "private": true, "type": "module" }\n');
  run('npm', ['install', '--no-audit', '--no-fund', '--no-save', '--silent', ...PACKAGES], { cwd: tools });
}
const { parseAllDocuments } = await import(path.join(tools, 'node_modules', 'yaml', 'dist', 'index.js'));

// 1. Render, with the example secret in place of the real one.
const scratch = path.join(example, '.tmp', `manifests-${process.pid}`);
rmSync(scratch, { recursive: true, force: true });
mkdirSync(scratch, { recursive: true });
for (const file of readdirSync(deploy)) copyFileSync(path.join(deploy, file), path.join(scratch, file));
copyFileSync(path.join(deploy, 'secret.example.yaml'), path.join(scratch, 'secret.yaml'));
let rendered;
try {
  rendered = run('kubectl', ['kustomize', scratch]);
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
const objects = parseAllDocuments(rendered).map((doc) => {
  if (doc.errors.length > 0)
    throw new Error(`kubectl kustomize printed invalid YAML: ${doc.errors[0].message}`);
  return doc.toJS();
});
out(`kubectl kustomize ${path.relative(process.cwd(), deploy) || '.'}: ${objects.length} objects`);

// 2. JSON schema, per kind.
const failures = [];
const modelPath = (apiVersion, kind) => {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : [null, apiVersion];
  return `kubernetes-models/${group === null ? '' : `${group}/`}${version}/${kind}`;
};
for (const object of objects) {
  const label = `${object.kind}/${object.metadata?.name}`;
  const spec = modelPath(object.apiVersion, object.kind);
  let Model;
  try {
    Model = (await import(path.join(tools, 'node_modules', `${spec}.js`)))[object.kind];
  } catch {
    failures.push(`${label}: no schema for ${object.apiVersion} ${object.kind}`);
    continue;
  }
  try {
    new Model(object).validate();
    out(`  schema ok: ${label} (${object.apiVersion})`);
  } catch (error) {
    failures.push(`${label}: ${error.message}`);
  }
}

// 3. Unknown fields: each object as a typed literal, checked by the repository's TypeScript.
const lines = [];
objects.forEach((object, i) => {
  const spec = modelPath(object.apiVersion, object.kind);
  lines.push(`import type { I${object.kind} as T${i} } from '${spec}';`);
  lines.push(`export const o${i}: T${i} = ${JSON.stringify(object, null, 2)};`);
});
writeFileSync(path.join(tools, 'manifests.ts'), `${lines.join('\n')}\n`);
const tsc = path.join(repo, 'node_modules', 'typescript', 'bin', 'tsc');
try {
  run(
    process.execPath,
    [
      tsc,
      '--noEmit',
      '--strict',
      '--module',
      'nodenext',
      '--moduleResolution',
      'nodenext',
      '--skipLibCheck',
      'manifests.ts',
    ],
    { cwd: tools },
  );
  out(`  fields ok: no unknown field in ${objects.length} objects`);
} catch (error) {
  failures.push(`unknown or mistyped fields:\n${String(error.stdout).trim()}`);
}

if (failures.length > 0) {
  process.stderr.write(`invalid manifests:\n- ${failures.join('\n- ')}\n`);
  process.exit(1);
}
out('manifests valid');
