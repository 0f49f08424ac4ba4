/** Saved label / taint templates. */

import { BadRequestError, type Operation, parseOperation } from '../operations.js';
import type { RouteContext } from './context.js';

/**
 * Templates one user may have saved. Unbounded, one operator (or a script with its cookie, 10 saves a second
 * under the request rate limit) could grow the shared list without end: every user's dialog loads all of it
 * into its picker at each open.
 */
export const MAX_TEMPLATES_PER_USER = 50;

export function registerTemplateRoutes(ctx: RouteContext): void {
  const { db, fail, route } = ctx;
  // Saved label / taint templates, shared by everyone: anyone lists them, operators save them, the author or
  // an admin deletes one.
  route('get', '/api/templates', {}, async (_req, res) => {
    res.json({ templates: await db.templates() });
  });

  route('post', '/api/templates', { role: 'operator' }, async (req, res, session) => {
    const body = (req.body ?? {}) as Record<string, unknown>;
    const name = body.name;
    if (typeof name !== 'string' || !/^[\w .:/-]{1,64}$/.test(name.trim())) {
      return fail(res, 400, 'invalid_input', 'name must be 1 to 64 letters, digits, spaces or . _ - : /', {
        field: 'name',
      });
    }
    // A URL resolves its "." and ".." segments away: /api/templates/./delete never reaches the delete route,
    // so a template of that name could not be deleted by anyone.
    if (name.trim() === '.' || name.trim() === '..') {
      return fail(res, 400, 'invalid_input', 'name must not be "." or ".."', { field: 'name' });
    }
    if (body.kind !== 'label' && body.kind !== 'taint') {
      return fail(res, 400, 'invalid_input', 'kind must be label or taint', { field: 'kind' });
    }
    let op: Operation;
    try {
      // The same validation as a batch: a template is a batch's fields, saved.
      op = parseOperation({ ...body, operation: body.kind === 'label' ? 'label_add' : 'taint_add' });
    } catch (error) {
      if (error instanceof BadRequestError)
        return fail(res, 400, 'invalid_input', error.message, { field: error.field });
      throw error;
    }
    const mine = (await db.templates()).filter((t) => t.createdBy === session.username).length;
    if (mine >= MAX_TEMPLATES_PER_USER) {
      return fail(
        res,
        409,
        'too_many_templates',
        `you have ${mine} templates (at most ${MAX_TEMPLATES_PER_USER} each); delete one first`,
        { limit: MAX_TEMPLATES_PER_USER },
      );
    }
    const template = {
      name: name.trim(),
      kind: body.kind,
      key: 'key' in op ? op.key : '',
      value: 'value' in op ? (op.value ?? null) : null,
      effect: 'effect' in op ? (op.effect ?? null) : null,
      createdBy: session.username,
      createdAt: Date.now(),
    } as const;
    if (!(await db.addTemplate(template))) {
      return fail(res, 409, 'template_exists', `a template named "${template.name}" exists already`);
    }
    res.status(201).json({ template });
  });

  route('post', '/api/templates/:name/delete', { role: 'operator' }, async (req, res, session) => {
    const name = String(req.params.name);
    const template = (await db.templates()).find((t) => t.name === name);
    if (template === undefined) return fail(res, 404, 'not_found', 'no such template');
    if (template.createdBy !== session.username && req.role !== 'admin') {
      return fail(res, 403, 'forbidden_role', `only ${template.createdBy} or an admin may delete it`);
    }
    await db.deleteTemplate(name);
    res.json({ ok: true });
  });
}
