// Which OS each sandbox host gets: the environment's sandbox_os, else builder.os when the sandbox has
// it, else debian12; a host shared by environments that disagree is refused.
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { sandboxHosts } from '../../src/commands/sandbox.js';
import { parseConfig } from '../../src/config/load.js';
import { ConfigError, UsageError } from '../../src/errors.js';

let file: string;

beforeAll(() => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-sandbox-os-'));
  mkdirSync(path.join(dir, 'templates'));
  writeFileSync(path.join(dir, 'templates/ckan.ini.j2'), 'x = 1\n');
  file = path.join(dir, 'ckan-release.yml');
});

function config(builderOs: string, envs: { name: string; host: string; port: number; os?: string }[]) {
  const text = `project: p
ckan: { source: ./ckan, ref: ckan-2.11.5 }
builder: { os: ${builderOs}, python: ${builderOs.startsWith('el') ? 'python3.11' : 'python3'} }
config: { template: templates/ckan.ini.j2 }
deploy: { restart: apache-graceful }
environments:
${envs
  .map(
    (e) => `  ${e.name}:
    hosts: [${e.host}]
    ssh_config: .ckan-release/sandbox/ssh_config
${e.os ? `    sandbox_os: ${e.os}\n` : ''}    host_vars: { ${e.host}: { ssh_port: ${e.port}, http_port: ${e.port + 6000} } }
`,
  )
  .join('')}`;
  return parseConfig(text, file, { env: {} });
}

describe('sandbox host OS', () => {
  it('follows builder.os when the sandbox has it, else debian12, unless sandbox_os says', () => {
    const envs = [
      { name: 'a', host: 'h1', port: 2310 },
      { name: 'b', host: 'h2', port: 2311, os: 'debian13' },
    ];
    expect(sandboxHosts(config('debian11', envs)).map((h) => [h.name, h.os])).toEqual([
      ['h1', 'debian11'],
      ['h2', 'debian13'],
    ]);
    expect(sandboxHosts(config('el9', envs)).map((h) => [h.name, h.os])).toEqual([
      ['h1', 'debian12'],
      ['h2', 'debian13'],
    ]);
  });

  it('refuses a host that two environments want on different OSes', () => {
    const cfg = config('debian12', [
      { name: 'a', host: 'h1', port: 2310, os: 'debian11' },
      { name: 'b', host: 'h1', port: 2310 },
    ]);
    expect(() => sandboxHosts(cfg)).toThrow(UsageError);
    expect(() => sandboxHosts(cfg)).toThrow(
      /host h1 is a sandbox host of environments with different sandbox_os \(debian11, debian12 in b\)/,
    );
  });

  it('refuses an OS the sandbox does not offer, naming the key and the choices', () => {
    let err: unknown;
    try {
      config('debian12', [{ name: 'a', host: 'h1', port: 2310, os: 'ubuntu2404' }]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).exitCode).toBe(2);
    expect((err as Error).message).toMatch(
      /:10: environments\.a\.sandbox_os: expected one of debian11, debian12, debian13, got "ubuntu2404"/,
    );
  });
});
