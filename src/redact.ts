// Credentials in URLs (https://user:token@host/..., also in git and pip settings) never reach a
// manifest, a log or a message.

/** Replaces the user-info of every URL in the text with "***". */
export function redactUrls(text: string): string {
  return text.replace(/\b([a-z][a-z0-9+.-]*:\/\/)[^/\s@]+@/gi, '$1***@');
}

/**
 * Takes the query (the signature, the credential's key ID) out of every presigned S3 URL in the text
 * (deploy.fetch: direct hands such URLs to hosts): "https://h/b/k?<redacted>".
 */
export function redactPresigned(text: string): string {
  return text.replace(/(\b[a-z][a-z0-9+.-]*:\/\/[^\s?"']*)\?[^\s"']*X-Amz-[^\s"']*/gi, '$1?<redacted>');
}
