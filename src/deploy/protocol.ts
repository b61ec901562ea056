// The host agent's commands (assets/host/ckan_release_host.py), their arguments and answers: one table,
// typed once. The same command runs one-shot (`agent.py COMMAND JSON`, exit 0 / 3 / other) or as one
// request of a serve session (README "How a host is driven"), where the exit code's meaning becomes the
// answer's `status`. Arguments are sent as JSON; an answer is one JSON object.
import type { HostFacts } from '../plan.js';
import type { ServerFacts } from './server-facts.js';

type Owner = { owner?: string | null; group?: string | null };
type Json = Record<string, unknown>;

/** command -> { args, answer, stdin: whether the command reads data (sent framed after the request) }. */
export interface AgentCommands {
  facts: { args: { root: string; libraries?: string[] }; answer: HostFacts; stdin: false };
  setup: {
    args: { root: string; shared: string[]; adopt?: boolean; owner?: string | null; group?: string | null };
    answer: { made: string[]; adopted: string | null };
    stdin: false;
  };
  lock: {
    args: { root: string; owner: Json; ttl: number; stale_token?: string };
    answer: { locked: boolean; taken_over: Json | null };
    stdin: false;
  };
  unlock: {
    args: { root: string; token?: string };
    answer: { unlocked: boolean; holder: Json | null };
    stdin: false;
  };
  receive: {
    args: Owner & {
      root: string;
      id: string;
      op: string;
      manifest: string;
      delta?: { mtime: number; bytes: number; sha256: string };
      /** deploy.link: hardlink links files equal to a kept release's (README "Linked releases") */
      link?: string;
    };
    answer: { partial: string; entries: number; linked?: number };
    /** the archive (release.tar.gz, or the delta's archive) */
    stdin: true;
  };
  /** The release's manifest, sent through the session, as the operation's copy on the host */
  'put-manifest': {
    /** bytes, sha256: of the JSON; gzip: the data is the JSON gzipped */
    args: { root: string; op: string; bytes: number; sha256: string; gzip?: boolean };
    answer: { manifest: string };
    /** the manifest's JSON, as the store has it (manifestJson), or gzipped */
    stdin: true;
  };
  /** deploy.fetch: direct (deploy/fetch.ts): the manifest from the store, and which chunks are cached */
  'fetch-manifest': {
    args: { root: string; id: string; op: string; bytes?: number; sha256?: string };
    /** manifest: where the host put it (the operation's copy, as put-manifest's) */
    answer: { cached: string[]; manifest: string };
    /** JSON: the presigned URL of the manifest and the artifact's chunks */
    stdin: true;
  };
  /** deploy.fetch: direct: the chunks it lacks downloaded by the host, then received as `receive` does */
  fetch: {
    args: Owner & { root: string; id: string; op: string; manifest: string; link?: string };
    answer: {
      partial: string;
      entries: number;
      linked?: number;
      downloaded: number;
      downloaded_bytes: number;
      cached: number;
      seconds: number;
    };
    /** JSON: the chunks, each with a presigned URL unless the host has it cached */
    stdin: true;
  };
  delta: {
    args: Owner & { root: string; id: string; op: string; manifest: string; mtime: number; link?: string };
    answer: {
      delta: boolean;
      partial?: string;
      need: string[] | null;
      reused?: number;
      reused_bytes?: number;
      tampered?: string[];
      tampered_count?: number;
      bases: string[];
      /** The current release was copied whole (cp -a) and trimmed, not file by file. */
      whole?: boolean;
      /** deploy.link: hardlink: how the files were placed. */
      link?: { linked: number; reflinked: number; copied: number } | null;
    };
    stdin: false;
  };
  finalize: {
    args: Owner & {
      root: string;
      id: string;
      op: string;
      partial: string;
      manifest: string;
      config_file: string;
      shared: { path: string; link: string }[];
      by?: Json;
    };
    answer: { release: string; existed: boolean };
    /** the rendered config file */
    stdin: true;
  };
  verify: {
    args: {
      root: string;
      id: string;
      manifest_sha256?: string;
      manifest?: string;
      allowed_extra?: string[];
      keep_manifest?: boolean;
      full?: boolean;
    };
    answer: {
      ok: boolean;
      problems: string[];
      extra: string[];
      need_manifest?: boolean;
      by?: 'tree seal' | 'seal' | 'full';
      hashed?: number;
    };
    stdin: false;
  };
  config: {
    args: Owner & { root: string; id: string; config_file: string };
    answer: { written: boolean };
    /** the rendered config file */
    stdin: true;
  };
  switch: {
    args: { root: string; id: string | null; op: string; by?: Json };
    answer: { previous: string | null; current: string | null };
    stdin: false;
  };
  ledger: { args: { root: string; entries: Json[] }; answer: { appended: number }; stdin: false };
  prune: {
    args: { root: string; keep: number; op: string; protect?: string[] };
    answer: { removed: { release: string | null; path?: string; why: string }[]; kept: string[] };
    stdin: false;
  };
  clean: { args: { root: string; op: string; all?: boolean }; answer: { removed: string[] }; stdin: false };
  health: {
    args: { url: string; host?: string; plugins: string[]; timeout: number };
    answer: { healthy: boolean; ckan_version?: string; extensions?: string[] } & Json;
    stdin: false;
  };
  'install-file': {
    args: { root: string; dest: string; mode: number; owner: string; group: string; check?: boolean };
    answer: { changed: boolean; existed: boolean; backup: string | null; made?: string | null };
    /** the file's rendered content */
    stdin: true;
  };
  'restore-file': {
    args: { root: string; dest: string; backup: string | null };
    answer: { restored: string };
    stdin: false;
  };
  restart: {
    args: Json & { recipe: string; timeout: number };
    answer: { method: string; seconds: number; old: number[]; new: number[] };
    stdin: false;
  };
  'server-facts': { args: { command: string; paths: string[] }; answer: ServerFacts; stdin: false };
  /**
   * Serve sessions only: a session started from the agent's text (the read-only way, nothing written)
   * writes its agent to the host after all, once the operation may write (installAgent).
   */
  'install-agent': { args: Json; answer: { installed: boolean }; stdin: false };
}

export type AgentCommand = keyof AgentCommands;
export type AgentArgs<C extends AgentCommand> = AgentCommands[C]['args'];
export type AgentAnswer<C extends AgentCommand> = AgentCommands[C]['answer'];

// ---- the serve protocol on the wire (JSON lines), as the agent's serve() reads and writes it

export interface AgentRequest {
  id: number;
  command: AgentCommand;
  args: Record<string, unknown>;
  /** Data follows in frames: "<bytes>\n" + bytes, ..., then "0\n" (complete) or "-\n" (given up). */
  stdin: boolean;
}

export type AgentReply =
  | { id: number; status: 'done'; answer: Record<string, unknown> }
  | { id: number; status: 'refused'; error: string; message: string; details: Record<string, unknown> }
  | { id: number; status: 'failed'; message: string; stderr: string };

/** The first line a serve process writes: ready, or (the bootstrap) asking for the agent's text. */
export type AgentHello =
  { ready: true; pid: number; python: string; executable: string } | { need_agent: true };

/** The frame header of `n` data bytes; FRAME_END ends the data, FRAME_ABORT gives it up. */
export function frameHeader(n: number): string {
  return `${n}\n`;
}
export const FRAME_END = '0\n';
export const FRAME_ABORT = '-\n';
