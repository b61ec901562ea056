// Which PostgreSQL servers `sandbox up` starts: read from the sandbox environments' vars and secrets,
// the same variables the config template reads.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { sandboxPostgres } from '../../src/commands/sandbox.js';
import { parseConfig } from '../../src/config/load.js';
import { UsageError } from '../../src/errors.js';

const FILE = path.resolve('examples/real-ckan/ckan-release.yml');
const TEXT = readFileSync(FILE, 'utf8');
const SECRETS = { postgres_password: 'pw-from-secrets' };

function specs(text: string, secrets: Record<string, unknown> = SECRETS) {
  return sandboxPostgres(parseConfig(text, FILE, { env: {} }), () => secrets);
}

describe('sandboxPostgres', () => {
  it("reads port, database and user from the environment's vars and the password from its secrets", () => {
    expect(specs(TEXT)).toEqual([
      { port: 5430, database: 'ckan_staging', user: 'ckan_staging', password: 'pw-from-secrets' },
    ]);
  });

  it('defaults database and user to ckan; no postgres_port, no server', () => {
    const text = TEXT.replace(/^ {6}postgres_(db|user): .*\n/gm, '');
    expect(specs(text)[0]).toMatchObject({ database: 'ckan', user: 'ckan' });
    expect(specs(text.replace(/^ {6}postgres_port: .*\n/m, ''))).toEqual([]);
  });

  it('refuses a missing password and a bad port with the key that is wrong (exit 2)', () => {
    const fails = (text: string, secrets?: Record<string, unknown>) => {
      try {
        specs(text, secrets);
      } catch (e) {
        expect(e).toBeInstanceOf(UsageError);
        return (e as UsageError).message;
      }
      throw new Error('no error');
    };
    expect(fails(TEXT, {})).toBe(
      'examples/real-ckan/ckan-release.yml: environments.staging: postgres_port is set, but no postgres_password',
    );
    expect(fails(TEXT.replace('postgres_port: 5430', 'postgres_port: lots'))).toBe(
      'examples/real-ckan/ckan-release.yml: environments.staging.vars.postgres_port: expected a TCP port number, got lots',
    );
  });
});
