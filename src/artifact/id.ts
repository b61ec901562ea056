// Release IDs: YYYYMMDDHHMMSSZ-xxxxxxxx. One rule for built artifacts and for the venv setup adopts.

/** YYYYMMDDHHMMSSZ-xxxxxxxx: UTC build time and 8 hex digits of the inputs' digest. */
export function artifactId(when: Date, inputsDigest: string): string {
  const stamp = when
    .toISOString()
    .replace(/[-:T]/g, '')
    .replace(/\.\d+Z$/, 'Z');
  return `${stamp}-${inputsDigest.slice(0, 8)}`;
}

export const ARTIFACT_ID = /^\d{14}Z-[0-9a-f]{8}$/;
