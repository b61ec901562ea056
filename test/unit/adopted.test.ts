// The stand-in for the release setup adopted from <root>/default (src/artifact/adopted.ts): what the
// deploy's templates and server files see for it.
import { describe, expect, it } from 'vitest';
import { adoptedManifest } from '../../src/artifact/adopted.js';
import { environment, loadConfig } from '../../src/config/load.js';
import { templateVars } from '../../src/deploy/deploy.js';
import { serverVars } from '../../src/deploy/server.js';

const config = loadConfig('examples/demo/ckan-release.yml');
const ID = '20261201210315Z-00000000';
const m = adoptedManifest(config.project, config.root, ID, 'python3|python2|python');

describe('an adopted release in templates', () => {
  it("has the site's own config as {{ config_file }} when legacy_config names it", () => {
    const env = environment(config, 'staging');
    const withLegacy = { ...env, vars: { ...env.vars, legacy_config: '/etc/ckan/default/production.ini' } };
    expect(templateVars({ config, env: withLegacy, secrets: {} }, env.hosts[0]!, m)).toMatchObject({
      release: `${config.root}/releases/${ID}`,
      config_file: '/etc/ckan/default/production.ini',
      plugins: [],
    });
    // Without legacy_config, the file it would have inside it (an old first deploy wrote one there).
    expect(templateVars({ config, env, secrets: {} }, env.hosts[0]!, m).config_file).toBe(
      `${config.root}/releases/${ID}/${env.configFile}`,
    );
    // A real release ignores legacy_config.
    const real = { ...m, id: '20261201000000Z-aaaaaaaa', adopted: undefined };
    expect(templateVars({ config, env: withLegacy, secrets: {} }, env.hosts[0]!, real).config_file).toBe(
      `${config.root}/releases/20261201000000Z-aaaaaaaa/${env.configFile}`,
    );
  });

  it('renders server files as setup did with it live (no release variables)', () => {
    const env = environment(config, 'staging');
    const s = { config, env, secrets: {} };
    expect(serverVars(s, env.hosts[0]!, m)).toEqual(serverVars(s, env.hosts[0]!, null));
  });
});
