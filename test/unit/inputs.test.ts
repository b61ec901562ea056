// The base venv image is keyed by what the find-links directories hold, never by where they are.
import { cpSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { findLinksListing } from '../../src/builder/inputs.js';

function wheelhouse(files: Record<string, string>): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-wheels-'));
  for (const [name, content] of Object.entries(files)) writeFileSync(path.join(dir, name), content);
  return dir;
}

describe('findLinksListing', () => {
  it('is the same for the same wheels under another path', () => {
    const a = wheelhouse({ 'x-1.0-py3-none-any.whl': 'one', 'y-2.0-py3-none-any.whl': 'two' });
    const b = path.join(mkdtempSync(path.join(os.tmpdir(), 'ckan-release-other-')), 'wheels');
    cpSync(a, b, { recursive: true });
    expect(findLinksListing([b])).toEqual(findLinksListing([a]));
    expect(findLinksListing([a]).join('\n')).not.toContain(a);
  });

  it('changes when a wheel changes content but not size or name', () => {
    const a = wheelhouse({ 'x-1.0-py3-none-any.whl': 'one' });
    const before = findLinksListing([a]);
    writeFileSync(path.join(a, 'x-1.0-py3-none-any.whl'), 'eno');
    expect(findLinksListing([a])).not.toEqual(before);
  });

  it('keeps URLs as they are and ignores subdirectories', () => {
    const a = wheelhouse({ 'x-1.0-py3-none-any.whl': 'one' });
    mkdirSync(path.join(a, 'sub'));
    expect(findLinksListing(['https://example.invalid/simple', a])).toEqual([
      'https://example.invalid/simple',
      expect.stringMatching(/^1\/x-1\.0-py3-none-any\.whl:[0-9a-f]{64}$/),
    ]);
  });
});
