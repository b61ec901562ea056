// The heal of a release already on a host (deploy.link: hardlink; README "Linked releases"). A file
// shared by hard link with other releases can be edited through any of them (an editor writing in
// place, a chmod); the seals see it (the shared inode's ctime moves), and instead of refusing the
// release, the agent's verify replaces each wrong file by the right bytes from another release on the
// host. What no release there still has is cut out of the artifact here and sent (receive with heal),
// then the release is verified again. The agent never writes through the shared inode.
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { OperationError } from '../errors.js';
import { callAgent, type AgentHost } from './agent.js';
import type { DeltaCache } from './delta.js';

/** What the agent's verify answers. */
export interface VerifyAnswer {
  ok: boolean;
  problems: string[];
  extra: string[];
  need_manifest?: boolean;
  by?: 'tree seal' | 'seal' | 'full';
  hashed?: number;
  /** Files replaced from another release on the host: path, the problem found, where from. */
  healed?: { path: string; was: string; from: string }[];
  /** Files no release on the host has right: to be sent from the artifact. */
  heal_need?: string[];
  /** The manifest the agent checked against (kept or uploaded): the heal's receive reads it too. */
  manifest?: string;
}

/** The agent's verify arguments that ask for the heal (none with deploy.link: copy, today's rule). */
export async function healArgs(
  link: 'hardlink' | 'copy',
  op: string,
  deltas: DeltaCache,
  owner: { owner: string | null; group: string | null },
): Promise<Record<string, unknown>> {
  if (link !== 'hardlink') return {};
  return { heal: { mtime: await deltas.mtime() }, op, ...owner };
}

/**
 * When a verify answered heal_need: sends those files from the artifact and verifies again. Returns
 * the last answer and every file healed, with the lines that say so.
 */
export async function healFromArtifact(
  agent: AgentHost,
  host: string,
  release: { root: string; id: string; op: string; owner: string | null; group: string | null },
  first: VerifyAnswer,
  deltas: DeltaCache,
  verifyAgain: () => Promise<VerifyAnswer>,
): Promise<{ answer: VerifyAnswer; said: string[] }> {
  const said: string[] = [];
  const tell = (healed: VerifyAnswer['healed']) => {
    for (const x of healed ?? [])
      said.push(`${host}: healed releases/${release.id}/${x.path} (${x.was}) from releases/${x.from}`);
  };
  tell(first.healed);
  if (!first.heal_need?.length) return { answer: first, said };
  const d = await deltas.get(first.heal_need);
  const sha256 = createHash('sha256').update(d.data).digest('hex');
  await callAgent(
    agent,
    'receive the files to heal',
    'receive',
    {
      root: release.root,
      id: release.id,
      op: release.op,
      owner: release.owner,
      group: release.group,
      manifest: first.manifest,
      heal: { bytes: d.data.length, sha256 },
    },
    { stdin: Readable.from([d.data]) },
  );
  for (const p of first.heal_need)
    said.push(
      `${host}: healed releases/${release.id}/${p} (no release on the host had it right) from the artifact`,
    );
  const answer = await verifyAgain();
  tell(answer.healed);
  if (answer.heal_need?.length)
    throw new OperationError(
      `${host}: releases/${release.id} still differs from its manifest after the heal: ${answer.heal_need.slice(0, 5).join(', ')}`,
    );
  return { answer, said };
}
