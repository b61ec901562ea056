// A fleet of sandbox hosts for an integration test file, in one call instead of the set-up each file
// copied: a throwaway copy of the example project (test/support/project.ts) whose config keeps the
// project's part and gets one environment for the test's hosts (their own ports and names), the
// sandbox hosts up (src/sandbox/sandbox.ts: sshd + Apache or uWSGI in containers on 127.0.0.1), and
// in afterAll the hosts down; when a test of the file failed, first what each host looks like
// (current, releases, the ledger's tail, the lock, the container's log) on stderr.
//
//   const fleet = useSandboxFleet({ env: 'site', hosts: [{ name: 'xx-web1', sshPort: 2340, httpPort: 8340 }] });
//   it('...', async () => { const id = await fleet().build(); await fleet().ok('ship', 'site', id); });
import path from 'node:path';
import type Docker from 'dockerode';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { containerName, sandboxDown, sandboxUp, type SandboxHostSpec } from '../../src/sandbox/sandbox.js';
import { testDocker } from './docker.js';
import { onHost } from './hosts.js';
import { testProject, type TestProject } from './project.js';

export interface FleetHost extends SandboxHostSpec {
  /** More host_vars of this host (ssh_port and http_port are set from the spec). */
  vars?: Record<string, string | number>;
}

export interface FleetOptions {
  /** The environment of the fleet's hosts in the config. */
  env: string;
  hosts: FleetHost[];
  /** The environment's vars (default: a site_url and site_title). */
  vars?: Record<string, string>;
  /** Edits the project's config before `environments:` (extensions, restart, server files...). */
  head?: (text: string) => string;
  /** Runs once the project exists, before the config is written (fixture repositories...). */
  prepare?: (project: TestProject) => Promise<void>;
  /** Runs `setup ENV` once the hosts are up. */
  setup?: boolean;
  /** Where sandboxUp's progress goes (default: nowhere). */
  say?: (line: string) => void;
}

export interface SandboxFleet {
  docker: Docker;
  project: TestProject;
  /** The config file with the fleet's environment. */
  config: string;
  env: string;
  hosts: FleetHost[];
  /** The CLI, in this process, with --config. */
  cli(...argv: string[]): Promise<{ code: number; out: string; err: string }>;
  /** The CLI; a non-zero exit throws with its output. Returns stdout + stderr. */
  ok(...argv: string[]): Promise<string>;
  /** `build` (of `config`, default the fleet's) and the artifact's ID. */
  build(config?: string): Promise<string>;
  /** A script on a host (docker exec); a non-zero exit throws. */
  sh(host: string, script: string): Promise<string>;
  /** What each host looks like: for a failed test's report. */
  diagnostics(): Promise<string>;
}

/** The config text: the project's part (edited by `head`) and the fleet's environment. */
export function fleetConfig(
  text: string,
  opts: Pick<FleetOptions, 'env' | 'hosts' | 'vars' | 'head'>,
): string {
  const head = text.slice(0, text.indexOf('environments:'));
  const vars = opts.vars ?? { site_url: `http://${opts.env}.test`, site_title: opts.env };
  const yaml = (o: Record<string, string | number>) =>
    `{ ${Object.entries(o)
      .map(([k, v]) => `${k}: ${typeof v === 'number' ? v : JSON.stringify(v)}`)
      .join(', ')} }`;
  return `${(opts.head ?? ((t) => t))(head).trimEnd()}
environments:
  ${opts.env}:
    hosts: [${opts.hosts.map((h) => h.name).join(', ')}]
    user: deploy
    ssh_config: .ckan-release/sandbox/ssh_config
    host_vars:
${opts.hosts.map((h) => `      ${h.name}: ${yaml({ ssh_port: h.sshPort, http_port: h.httpPort, ...h.vars })}`).join('\n')}
    vars: ${yaml(vars)}
    secrets: secrets/staging.yml
`;
}

/**
 * Registers beforeAll (project, config, hosts up, setup), afterEach (notes a failure) and afterAll
 * (diagnostics when a test failed, hosts down) for the file; returns the fleet once beforeAll ran.
 */
export function useSandboxFleet(opts: FleetOptions, timeoutMs = 900_000): () => SandboxFleet {
  let fleet: SandboxFleet | undefined;
  let failed = false;
  beforeAll(async () => {
    const docker = await testDocker();
    const project = await testProject();
    await opts.prepare?.(project);
    const config = project.variant(opts.env, (t) => fleetConfig(t, opts));
    const cli = (...argv: string[]) => project.cli('--config', config, ...argv);
    const ok = async (...argv: string[]) => {
      const r = await cli(...argv);
      if (r.code !== 0)
        throw new Error(`ckan-release ${argv.join(' ')} exited ${r.code}:\n${r.err}\n${r.out}`);
      return r.out + r.err;
    };
    fleet = {
      docker,
      project,
      config,
      env: opts.env,
      hosts: opts.hosts,
      cli,
      ok,
      async build(cfg = config) {
        const r = await project.cli('--config', cfg, 'build');
        if (r.code !== 0) throw new Error(`build (${path.basename(cfg)}) exited ${r.code}:\n${r.err}`);
        return r.out.trim().split('\n').pop()!;
      },
      async sh(host, script) {
        const r = await onHost(docker, host, script);
        if (r.code !== 0) throw new Error(`on ${host}: ${script}\nexited ${r.code}: ${r.out}`);
        return r.out;
      },
      diagnostics: () => diagnostics(docker, opts.hosts, project),
    };
    await sandboxUp(
      docker,
      { dir: path.join(project.dir, '.ckan-release/sandbox'), hosts: opts.hosts },
      opts.say ?? (() => undefined),
    );
    if (opts.setup) await ok('setup', opts.env);
  }, timeoutMs);
  afterEach((ctx) => {
    if (ctx.task.result?.state === 'fail') failed = true;
  });
  afterAll(async () => {
    if (!fleet) return;
    if (failed)
      process.stderr.write(await fleet.diagnostics().catch((e: Error) => `no diagnostics: ${e.message}\n`));
    await sandboxDown(
      fleet.docker,
      { dir: path.join(fleet.project.dir, '.ckan-release/sandbox') },
      () => undefined,
    );
  }, 120_000);
  return () => {
    if (!fleet) throw new Error('the sandbox fleet is not up: its beforeAll failed (see above)');
    return fleet;
  };
}

async function diagnostics(docker: Docker, hosts: FleetHost[], project: TestProject): Promise<string> {
  const parts: string[] = [`== sandbox fleet diagnostics (project ${project.dir})`];
  for (const h of hosts) {
    const state = await onHost(
      docker,
      h.name,
      `cd /usr/lib/ckan 2>/dev/null || { echo "no /usr/lib/ckan"; exit 0; }
echo "current: $(readlink current || echo none)"
echo "releases: $(ls -A releases 2>/dev/null | tr '\\n' ' ')"
echo "lock: $(cat .ckan-release/lock/owner.json 2>/dev/null || echo none)"
echo "ledger (last 8):"; tail -n 8 .ckan-release/ledger.jsonl 2>/dev/null`,
    ).catch((e: Error) => ({ code: -1, out: `cannot look: ${e.message}\n` }));
    let logs: string;
    try {
      const buf = (await docker.getContainer(containerName(h.name)).logs({
        stdout: true,
        stderr: true,
        tail: 30,
      })) as unknown as Buffer;
      logs = demux(buf);
    } catch (e) {
      logs = `no container log: ${(e as Error).message}\n`;
    }
    parts.push(
      `-- ${h.name} (ssh 127.0.0.1:${h.sshPort}, http ${h.httpPort})\n${state.out}-- its log:\n${logs}`,
    );
  }
  return `${parts.join('\n')}\n`;
}

/** A non-TTY container's log: frames of an 8-byte header (stream, size) and the bytes. */
function demux(buf: Buffer): string {
  const out: Buffer[] = [];
  let at = 0;
  while (at + 8 <= buf.length) {
    const size = buf.readUInt32BE(at + 4);
    out.push(buf.subarray(at + 8, at + 8 + size));
    at += 8 + size;
  }
  return Buffer.concat(out).toString('utf8');
}
