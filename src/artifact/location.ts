// Where an S3 store is (store: s3://BUCKET/PREFIX plus the `s3:` settings). Kept apart from s3.ts so
// loading a config does not load the AWS SDK.

export interface S3Location {
  bucket: string;
  /** '' or ending in '/'. */
  prefix: string;
  endpoint?: string | undefined;
  region?: string | undefined;
  profile?: string | undefined;
  forcePathStyle?: boolean | undefined;
}

/** Parses s3://BUCKET[/PREFIX]; undefined for anything else (a local directory). */
export function parseS3Url(url: string): { bucket: string; prefix: string } | undefined {
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(url);
  if (!m) return undefined;
  const prefix = (m[2] ?? '').replace(/^\/+|\/+$/g, '');
  return { bucket: m[1]!, prefix: prefix ? `${prefix}/` : '' };
}

export function s3Url(loc: S3Location): string {
  return `s3://${loc.bucket}/${loc.prefix}`;
}
