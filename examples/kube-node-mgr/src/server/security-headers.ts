import type { NextFunction, Request, Response } from 'express';

/**
 * The page loads only its own script, styles and socket: no inline script or style, no framing (against
 * clickjacking of the batch buttons), no MIME sniffing, and no URL (which may carry a task id) in the
 * Referer sent elsewhere. `connect-src 'self'` covers the same-origin `ws:` / `wss:` socket (CSP Level 3).
 */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "font-src 'self'",
  "manifest-src 'self'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

/** Sets the security headers on every response (pages and API alike). */
export function securityHeaders(_req: Request, res: Response, next: NextFunction): void {
  res.setHeader('content-security-policy', CONTENT_SECURITY_POLICY);
  res.setHeader('x-frame-options', 'DENY');
  res.setHeader('x-content-type-options', 'nosniff');
  res.setHeader('referrer-policy', 'no-referrer');
  res.setHeader('cross-origin-opener-policy', 'same-origin');
  next();
}
