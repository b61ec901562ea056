// The executor's entry points as the in-process tests call them, in one place: ship and rollback
// (src/deploy/deploy.ts planShip() then deploy(), which also prunes), and setting up local hosts with the real agent.
// When the executor's shape changes (plan-then-execute), this file changes, not the tests.
import { execFileSync } from 'node:child_process';
import type { StoredArtifact } from '../../src/artifact/store.js';
import { AGENT_SCRIPT } from '../../src/deploy/agent.js';
import { deploy, planShip, type DeployResult } from '../../src/deploy/deploy.js';
import type { Session } from '../../src/deploy/session.js';
import type { LocalFleet } from './local-fleet.js';

/** Plan, then execute, as the commands do (src/commands/hosts.ts shipArtifact). */
async function run(s: Session, artifact: StoredArtifact, operation: string): Promise<DeployResult> {
  const { plan, facts } = await planShip(s, artifact.manifest, operation, {
    dryRun: false,
    label: operation,
  });
  return deploy(s, artifact, plan, facts, { operation });
}

export function ship(s: Session, artifact: StoredArtifact): Promise<DeployResult> {
  return run(s, artifact, 'ship');
}

/** A rollback to `artifact` (the hosts' rollback target): the release left is marked bad. */
export function rollback(s: Session, artifact: StoredArtifact): Promise<DeployResult> {
  return run(s, artifact, 'rollback');
}

/** `setup` on every local host: the layout and the shared directories, by the agent itself. */
export function setupHosts(fleet: LocalFleet, python: string): void {
  for (const h of fleet.hosts) {
    execFileSync(python, [
      AGENT_SCRIPT,
      'setup',
      JSON.stringify({ root: h.dir, shared: fleet.config.shared.map((x) => x.path) }),
    ]);
  }
}
