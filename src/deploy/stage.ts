// Phase 1 of a deploy on one host: lock, get the release into releases/<ID> (the full archive or a
// delta, or verified in place when it is already there), render its config, link the shared paths,
// run the before_switch hooks.
import { createHash } from 'node:crypto';
import path from 'node:path';
import { Readable } from 'node:stream';
import { adoptedSkips, isAdopted } from '../artifact/adopted.js';
import type { Manifest } from '../artifact/manifest.js';
import {
  fileCount,
  manifestGzip,
  manifestJsonLength,
  manifestSha256,
  totalSize,
} from '../artifact/manifest-file.js';
import { readArtifact, type StoredArtifact } from '../artifact/store.js';
import { OperationError } from '../errors.js';
import { releaseDir } from '../layout.js';
import type { HostFacts, HostPlan } from '../plan.js';
import { renderFile, renderString } from '../render/template.js';
import { callAgent, type AgentHost } from './agent.js';
import type { AgentAnswer } from './protocol.js';
import { reusedText, type DeltaCache } from './delta.js';
import { fetchRelease, placeManifest } from './fetch.js';
import { healArgs, healFromArtifact, type VerifyAnswer } from './heal.js';
import { lockHost, lockOwner } from './lock.js';
import { agentFor, type HostSession, type Session } from './session.js';
import { cmd } from './shell.js';
import { shellVars, templateVars } from './vars.js';

/** The interpreter of the artifact's release: the agent runs with it. */
export function pythonOf(m: Manifest): string {
  return m.builder.python.path;
}

/**
 * Phase 1 on one host, as its plan says: lock, then get the release into releases/<ID> (sent, or
 * already there and verified in place), then the before_switch hooks the plan gives this host.
 * Everything up to, not including, the switch. The preflight (plan problems) was passed before.
 */
export async function stageOnHost(
  s: Session,
  h: HostSession,
  artifact: StoredArtifact,
  operation: string,
  hp: HostPlan,
  facts: HostFacts,
  deltas: DeltaCache,
): Promise<void> {
  const m = artifact.manifest;
  const python = pythonOf(m);
  const agent = agentFor(s, h, python);
  const existing = facts.releases.find((r) => r.id === m.id);
  s.events?.emit({ type: 'phase', host: h.name, phase: 'lock' });
  await lockHost(s, h, python, operation, facts.lock);
  const rendered = () =>
    renderFile(
      s.config.config.template,
      templateVars(s, h.name, m),
      path.relative(process.cwd(), s.config.config.template),
    );
  if (isAdopted(m)) {
    // setup's link to <root>/default: nothing to verify it against, and it keeps the site's own config.
    s.say(
      `${h.name}: releases/${m.id} is the release adopted from ${m.adopted!.from}; skipped: ${adoptedSkips(m).join('; ')}`,
    );
  } else if (hp.transfer.mode === 'none') {
    // Already on the host (a re-ship, a rollback): not sent again, but checked file by file against
    // the manifest, and its config rendered anew (the secrets or vars may have changed).
    s.events?.emit({ type: 'phase', host: h.name, phase: 'verify', detail: `releases/${m.id}` });
    let how = '';
    if (fileCount(m) > 0) {
      // The host's kept manifest (same sha256) and the release's seals usually prove it unchanged
      // without sending the manifest or reading a file (README "Performance"); else it is sent.
      const heal = await healArgs(s.config.deploy.link, s.op, deltas, ownerOf(s));
      const verify = (manifest?: string) =>
        callAgent<VerifyAnswer>(agent, 'verify', 'verify', {
          ...heal,
          root: s.config.root,
          id: m.id,
          manifest_sha256: manifestSha256(m),
          ...(manifest ? { manifest } : {}),
          allowed_extra: [s.env.configFile, ...s.config.shared.map((x) => x.link)],
          // Verified: a later delta may copy from it.
          keep_manifest: true,
          full: s.rehash ?? false,
        });
      let v = await verify();
      let uploaded: string | undefined;
      if (v.need_manifest) {
        uploaded = await uploadManifest(s, agent, m);
        v = await verify(uploaded);
      }
      const healed = await healFromArtifact(
        agent,
        h.name,
        { root: s.config.root, id: m.id, op: s.op, ...ownerOf(s) },
        v,
        deltas,
        () => verify(uploaded),
      );
      v = healed.answer;
      healed.said.forEach((line) => s.say(line));
      if (uploaded) await cleanTmp(s, agent);
      if (!v.ok) {
        throw new OperationError(
          `${h.name}: releases/${m.id} differs from its manifest, refusing to switch to it: ${[...v.problems, ...v.extra.map((x) => `unexpected ${x}`)].slice(0, 5).join('; ')}`,
        );
      }
      how =
        v.by === 'tree seal'
          ? ', unchanged since verified (tree seal)'
          : `, verified against the manifest (${v.hashed ?? '?'} files hashed${v.by === 'seal' ? ', the others unchanged since sealed' : ''})`;
    }
    await callAgent(
      agent,
      'write the config',
      'config',
      {
        root: s.config.root,
        id: m.id,
        config_file: s.env.configFile,
        owner: s.config.deploy.owner ?? null,
        group: s.config.deploy.group ?? null,
      },
      { stdin: Readable.from([rendered()]) },
    );
    s.say(
      `${h.name}: releases/${m.id} is already there (${existing?.state ?? 'unknown'})${how}; not sent again`,
    );
  } else {
    const need = totalSize(m) + m.archive.bytes;
    if (typeof facts.disk_free === 'number' && facts.disk_free < need * 1.2) {
      throw new OperationError(
        `${h.name}: preflight: ${facts.disk_free} bytes free under ${s.config.root}, the release needs about ${need}`,
      );
    }
    const manifestPath = await placeManifest(s, h, agent, m, () => uploadManifest(s, agent, m));
    s.events?.emit({ type: 'phase', host: h.name, phase: 'upload', detail: `${m.archive.bytes} bytes` });
    const received = await sendRelease(s, h, agent, artifact, manifestPath, deltas, facts);
    s.events?.emit({ type: 'phase', host: h.name, phase: 'finalize' });
    await callAgent(
      agent,
      'finalize',
      'finalize',
      {
        root: s.config.root,
        id: m.id,
        op: s.op,
        partial: received,
        manifest: manifestPath,
        config_file: s.env.configFile,
        owner: s.config.deploy.owner ?? null,
        group: s.config.deploy.group ?? null,
        shared: s.config.shared,
        by: lockOwner(s, operation),
      },
      { stdin: Readable.from([rendered()]) },
    );
    await cleanTmp(s, agent);
    s.say(`${h.name}: staged releases/${m.id} (config rendered, shared paths linked)`);
  }
  for (const run of hp.hooks.before_switch) await runHook(s, h, run, m, 'before_switch');
  s.events?.emit({ type: 'phase', host: h.name, phase: 'staged', detail: `releases/${m.id}` });
}

/** The agent's delta answer (protocol.ts). */
type DeltaPlan = AgentAnswer<'delta'>;

/** Beyond this share of the release's bytes still to send, a delta is not worth it: the full archive. */
const DELTA_MAX_SHARE = 0.5;

/**
 * Gets the release into a partial directory on the host and returns its path: a delta when the host
 * has earlier releases to copy unchanged files from (the current one whole when its tree seal proves it
 * unchanged, else file by file, hashing each one its seal does not vouch for, so a tampered base file
 * is never used), the full archive otherwise. Either way every received file is
 * checked against the manifest, and finalize checks the whole tree again (files this operation wrote
 * and sealed are not read twice).
 */
async function sendRelease(
  s: Session,
  h: HostSession,
  agent: AgentHost,
  artifact: StoredArtifact,
  manifestPath: string,
  deltas: DeltaCache,
  facts: HostFacts,
): Promise<string> {
  const m = artifact.manifest;
  const t0 = Date.now();
  const mtime = await deltas.mtime();
  // The delta archive the host will most likely need, cut while it assembles the release (a second
  // on the bench release, otherwise spent after its answer); its answer decides what is sent.
  const store = path.dirname(artifact.dir);
  const guess = deltas.guessNeed(
    m,
    facts.releases.filter((r) => !r.adopted).map((r) => r.id),
    (id) => {
      try {
        return readArtifact(store, id).manifest;
      } catch {
        return null;
      }
    },
    DELTA_MAX_SHARE,
  );
  if (guess) deltas.get(guess).catch(() => undefined);
  // Received and copied files get their owner at once: finalize then trusts their seal (no re-hash).
  const owner = ownerOf(s);
  const plan = await callAgent<DeltaPlan>(agent, 'delta', 'delta', {
    root: s.config.root,
    id: m.id,
    op: s.op,
    manifest: manifestPath,
    mtime,
    link: s.config.deploy.link,
    ...owner,
  });
  if (plan.tampered_count) {
    s.say(
      `${h.name}: ${plan.tampered_count} files of earlier releases differ from their manifests and were not reused (e.g. ${plan.tampered!.slice(0, 3).join(', ')})`,
    );
  }
  if (plan.delta && plan.need) {
    const sizes = new Map(m.files.map((f) => [f.path, f.size]));
    const total = totalSize(m);
    const needBytes = plan.need.reduce((n, p) => n + (sizes.get(p) ?? 0), 0);
    if (needBytes <= total * DELTA_MAX_SHARE) {
      const copied = reusedText(plan);
      if (plan.need.length === 0) {
        s.say(`${h.name}: delta: nothing to send, ${copied}`);
        return plan.partial!;
      }
      const d = await deltas.get(plan.need);
      await callAgent(
        agent,
        'receive the delta',
        'receive',
        {
          root: s.config.root,
          id: m.id,
          op: s.op,
          manifest: manifestPath,
          delta: { mtime, bytes: d.data.length, sha256: createHash('sha256').update(d.data).digest('hex') },
          ...owner,
        },
        { stdin: Readable.from([d.data]), onProgress: progress(s, h.name, d.data.length, t0) },
      );
      s.say(
        `${h.name}: delta: sent ${d.files} files (${d.data.length} bytes compressed, ${(d.bytes / 1e6).toFixed(1)} MB) in ${((Date.now() - t0) / 1000).toFixed(1)} s, ${copied}`,
      );
      return plan.partial!;
    }
    s.say(
      `${h.name}: a delta would send ${((needBytes / total) * 100).toFixed(0)}% of the release: sending the full archive`,
    );
  }
  const fetched = await fetchRelease(s, h, agent, m, manifestPath, owner, s.config.deploy.link);
  if (fetched) return fetched;
  const received = await callAgent<{ partial: string }>(
    agent,
    'receive',
    'receive',
    { root: s.config.root, id: m.id, op: s.op, manifest: manifestPath, link: s.config.deploy.link, ...owner },
    {
      // Read by the session into buffers it refills (agent-session.ts), not a new buffer per MB per host.
      stdin: { file: artifact.archive },
      onProgress: progress(s, h.name, m.archive.bytes, t0),
    },
  );
  const secs = (Date.now() - t0) / 1000;
  s.say(
    `${h.name}: received ${(m.archive.bytes / 1e6).toFixed(1)} MB in ${secs.toFixed(1)} s, every file checked against the manifest`,
  );
  return received.partial;
}

function ownerOf(s: Session): { owner: string | null; group: string | null } {
  return { owner: s.config.deploy.owner ?? null, group: s.config.deploy.group ?? null };
}

/**
 * Puts the manifest where the agent reads it (the operation's copy in <root>/.ckan-release/tmp/),
 * through the agent session: no command of its own, no sudo; gzipped (JSON shrinks to a fifth), the
 * agent checking the length and sha256 of what it inflates. Returns its path there.
 */
async function uploadManifest(s: Session, agent: AgentHost, m: Manifest): Promise<string> {
  const bytes = manifestJsonLength(m);
  const r = await callAgent<{ manifest: string }>(
    agent,
    'upload the manifest',
    'put-manifest',
    { root: s.config.root, op: s.op, bytes, sha256: manifestSha256(m), gzip: true },
    { stdin: Readable.from([await manifestGzip(m)]) },
  );
  return r.manifest;
}

/** Removes what this operation left in the host's tmp directory (the manifest, the delta's list). */
async function cleanTmp(s: Session, agent: AgentHost): Promise<void> {
  await callAgent(agent, 'remove the temporary files', 'clean', { root: s.config.root, op: s.op });
}

/** Upload progress: a line at each quarter, with the rate so far. */
function progress(s: Session, host: string, total: number, t0: number): (sent: number) => void {
  let shown = 0;
  return (sent) => {
    // With an event stream, the renderers show the upload (throttled); the quarter lines are for without.
    if (s.events) return s.events.emit({ type: 'upload', host, sent, total });
    const quarter = Math.floor((sent / total) * 4);
    if (quarter <= shown || quarter >= 4) return;
    shown = quarter;
    const secs = (Date.now() - t0) / 1000;
    s.say(
      `${host}: sent ${quarter * 25}% (${(sent / 1e6).toFixed(1)} of ${(total / 1e6).toFixed(1)} MB, ${(sent / 1e6 / Math.max(secs, 0.001)).toFixed(1)} MB/s)`,
    );
  };
}

/** Runs one hook (its `run` template) on one host, in the release's directory, as deploy.owner. */
export async function runHook(
  s: Session,
  h: HostSession,
  run: string,
  m: Manifest,
  when: string,
): Promise<void> {
  const line = renderString(run, shellVars(templateVars(s, h.name, m)), `deploy.hooks.${when}`);
  const release = releaseDir(s.config.root, m.id);
  const argv = ['sh', '-c', `cd ${cmd([release])} && ${line}`];
  const asOwner =
    s.config.deploy.owner && h.sudo ? ['sudo', '-n', '-u', s.config.deploy.owner, '--', ...argv] : argv;
  s.events?.emit({
    type: 'phase',
    host: h.name,
    phase: when === 'after_switch' ? 'after_switch' : 'before_switch',
    detail: run,
  });
  s.say(`${h.name}: ${when} hook: ${run}`);
  await h.remote.run(`${when} hook "${run}"`, cmd(asOwner));
}
