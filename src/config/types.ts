// The validated configuration, with defaults applied and paths resolved against the config's directory.
import type { BuilderNetwork, FetchMode, SandboxOs } from './schema.js';

export interface GitSource {
  /** As written in the config (a URL, or a path relative to the config). */
  source: string;
  /** What git is given: URLs as they are, local paths made absolute. */
  url: string;
  ref: string;
}

export interface Extension extends GitSource {
  name: string;
  plugins: string[];
  /** The files installed with pip -r: named, none ([]), or 'auto' (found by the builder script). */
  requirements: string[] | 'auto';
}

export interface Hook {
  run: string;
  once: boolean;
}

export interface Environment {
  name: string;
  hosts: string[];
  user: string | undefined;
  port: number | undefined;
  /** Absolute path of an extra OpenSSH client config, read before ~/.ssh/config. */
  sshConfig: string | undefined;
  /** The CKAN config's file name in each release for this environment (config_file, else config.file). */
  configFile: string;
  vars: Record<string, unknown>;
  /** Per-host template variables (as Ansible's host_vars), over `vars`. */
  hostVars: Record<string, Record<string, unknown>>;
  /** Absolute path of the secrets file (plain YAML or ansible-vault), read only when the environment is used. */
  secrets: string | undefined;
  requires: string | undefined;
  /** Privileged steps through `sudo -n` (over deploy.become), as become_user (over deploy.become_user). */
  become?: boolean;
  becomeUser?: string;
  /** How many hosts are worked on at once. */
  parallel: number;
  /** The OS of this environment's sandbox hosts (`sandbox up`); unset: builder.os when the sandbox has it. */
  sandboxOs?: SandboxOs;
}

export interface Config {
  /** Absolute path of the config file, and the name used for it in messages. */
  file: string;
  displayFile: string;
  dir: string;
  project: string;
  root: string;
  /** The local artifact store: the store itself, or with an S3 store, the cache of its artifacts. */
  store: string;
  /** store: s3://...: the shared store; artifacts are published to it and fetched from it into `store`. */
  s3: import('../artifact/location.js').S3Location | undefined;
  /** Webhook URLs (may hold secrets: never printed whole). */
  notify: string[];
  ckan: GitSource;
  builder: {
    os: string;
    /** Absolute path of docker/<os>/Dockerfile (the project's own docker/ first, then the tool's). */
    dockerfile: string;
    python: string;
    network: BuilderNetwork;
    pip: {
      indexUrl: string | undefined;
      findLinks: string[];
      extraArgs: string[];
      /** pip -c lines, for the base install and the release's. */
      constraints: string[];
      /** Requirement lines that replace the same package's line in every requirements file read. */
      overrides: string[];
    };
    /** Packages installed into every release (e.g. uwsgi), with CKAN's requirements. */
    extraRequirements: string[];
  };
  extensions: Extension[];
  /** Absolute path of the patches directory, or undefined when the project has none. */
  patches: string | undefined;
  config: { template: string; file: string };
  shared: { path: string; link: string }[];
  deploy: {
    keepReleases: number;
    /**
     * hardlink: a file equal to a kept release's (content, mode, owner, group, mtime) is a hard link to
     * it, and an edit found on a shared inode is healed; copy: every release has its own copies.
     */
    link: 'hardlink' | 'copy';
    /** ssh: the client sends the archive; direct: hosts download it from the S3 store (deploy/fetch.ts). */
    fetch: FetchMode;
    owner: string | undefined;
    group: string | undefined;
    /** Privileged steps through `sudo -n`; undefined: when owner is set and the SSH user is not root. */
    become?: boolean;
    /** The user sudo runs them as (default root). */
    becomeUser?: string;
    restart: string;
    /** host: the Host header sent (a template; default: site_url's host; "" sends the URL's own). */
    healthcheck: { url: string; timeout: number; host?: string };
    hooks: { beforeSwitch: Hook[]; afterSwitch: Hook[] };
  };
  server: {
    files: ServerFile[];
    apache: { processGroup: string; command: string };
    uwsgi: { pidfile: string; start: string | undefined };
    /** Seconds a restart recipe waits for the old processes to be replaced. */
    timeout: number;
  };
  environments: Record<string, Environment>;
}

/** A file of the web server's wiring (WSGI script, vhost, uwsgi ini...), rendered and installed per host. */
export interface ServerFile {
  /** As written in the config: a path relative to it, or builtin:NAME. */
  source: string;
  /** Absolute path of the template on this machine. */
  template: string;
  dest: string;
  /** Numeric mode, e.g. 0o644. */
  mode: number;
  owner: string;
  group: string;
  reload: string | undefined;
}
