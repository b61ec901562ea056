// The measured contrast for restart recipes (README "Web servers"): the same switches under the same
// load, once with a plain `apachectl graceful` as deploy.restart and once with the apache-graceful
// recipe, on one Apache + mod_wsgi sandbox host. Used by `npm run bench`; not part of `npm test` (the
// recipe's zero is asserted by test/integration/server.test.ts).
import path from 'node:path';
import Docker from 'dockerode';
import { freePorts, sandboxDown, sandboxUp } from '../src/sandbox/sandbox.js';
import { startLoad, type LoadResult } from '../test/support/load.js';
import { testProject } from '../test/support/project.js';

export interface ContrastResult {
  switches: number;
  plain: LoadResult & { seconds: number };
  recipe: LoadResult & { seconds: number };
}

const PLAIN = 'sudo -n apachectl graceful';

export async function restartContrast(switches: number, say: (l: string) => void): Promise<ContrastResult> {
  const docker = new Docker();
  const project = await testProject();
  const [ssh, http] = (await freePorts(2)) as [number, number];
  const host = 'bench-restart';
  const config = (restart: string) =>
    project.variant(`restart-${restart === PLAIN ? 'plain' : 'recipe'}`, (text) => {
      const head = text.slice(0, text.indexOf('environments:'));
      return `${head.replace('restart: sudo -n /usr/sbin/apachectl graceful', `restart: ${restart}`)}
server:
  files:
    - { template: builtin:wsgi.py, dest: /etc/ckan/default/wsgi.py }
    - { template: builtin:apache-vhost.conf, dest: /etc/apache2/sites-available/ckan.conf, reload: sudo -n apachectl graceful }
environments:
  site:
    hosts: [${host}]
    user: deploy
    ssh_config: .ckan-release/sandbox/ssh_config
    host_vars:
      ${host}: { ssh_port: ${ssh}, http_port: ${http}, http_listen: '127.0.0.1:${http}' }
    vars: { site_url: 'http://site.test', site_title: 'Site' }
    secrets: secrets/staging.yml
`;
    });
  const plainConfig = config(PLAIN);
  const recipeConfig = config('apache-graceful');
  const run = async (cfg: string, ...argv: string[]) => {
    const r = await project.cli('--config', cfg, ...argv);
    if (r.code !== 0) throw new Error(`ckan-release ${argv.join(' ')} exited ${r.code}:\n${r.err}`);
    return r.out.trim().split('\n').pop()!;
  };
  say('restart contrast: building two releases of the example project');
  const A = await run(recipeConfig, 'build');
  const bConfig = project.variant('restart-b', (t) => t.replace('ref: v1.1.0', 'ref: v1.0.0'));
  const B = await run(bConfig, 'build');
  const dir = path.join(project.dir, '.ckan-release/sandbox');
  await sandboxUp(docker, { dir, hosts: [{ name: host, sshPort: ssh, httpPort: http }] }, () => undefined);
  try {
    await run(recipeConfig, 'setup', 'site');
    await run(recipeConfig, 'ship', 'site', A);
    const measure = async (cfg: string) => {
      const t0 = Date.now();
      const load = startLoad(http, 4);
      let error: unknown;
      try {
        for (let i = 0; i < switches / 2; i++) {
          await run(cfg, 'ship', 'site', B);
          await run(cfg, 'rollback', 'site');
        }
      } catch (e) {
        error = e;
      }
      const r = await load.stop();
      if (error) throw error;
      return { ...r, seconds: (Date.now() - t0) / 1000 };
    };
    say(`restart contrast: ${switches} switches with \`${PLAIN}\``);
    const plain = await measure(plainConfig);
    say(`restart contrast: ${switches} switches with apache-graceful`);
    const recipe = await measure(recipeConfig);
    return { switches, plain, recipe };
  } finally {
    await sandboxDown(docker, { dir }, () => undefined);
  }
}
