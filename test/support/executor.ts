// The executor's entry points as the in-process tests call them, in one place: ship and rollback
// (src/deploy/deploy.ts deploy(), which also prunes), and setting up local hosts with the real agent.
// When the executor's shape changes (plan-then-execute), this file changes, not the tests.
import { execFileSync } from 'node:child_process';
import type { StoredArtifact } from '../../src/artifact/store.js';
import { AGENT_SCRIPT } from '../../src/deploy/agent.js';
import { deploy, type DeployResult, type Session } from '../../src/deploy/deploy.js';
import type { LocalFleet } from './local-fleet.js';

export function ship(s: Session, artifact: StoredArtifact): Promise<DeployResult> {
  return deploy(s, artifact, { operation: 'ship' });
}

/** A rollback to `artifact` (the hosts' rollback target): the release left is marked bad. */
export function rollback(s: Session, artifact: StoredArtifact): Promise<DeployResult> {
  return deploy(s, artifact, { operation: 'rollback', markPreviousBad: true });
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
