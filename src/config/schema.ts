// The ckan-release.yml schema: every key of the design, its type, default and the checks that need
// only the key itself. Checks that relate keys to each other or to the file system are in load.ts.
import { isScalar, isSeq, type Node } from 'yaml';
import {
  bool,
  fail,
  type Validator,
  int,
  list,
  mapOf,
  obj,
  oneOf,
  optional,
  required,
  str,
  anyValue,
  withDefault,
} from './validate.js';

export const BUILDER_NETWORKS = ['none', 'default', 'host'] as const;
/** How hosts get an artifact: sent through SSH, or downloaded from the S3 store themselves. */
export const FETCH_MODES = ['ssh', 'direct'] as const;
export type FetchMode = (typeof FETCH_MODES)[number];
export type BuilderNetwork = (typeof BUILDER_NETWORKS)[number];
/** deploy.link: how a release shares the files it has in common with the releases kept on a host. */
export const DEPLOY_LINKS = ['hardlink', 'copy'] as const;
/** The OSes `sandbox up` makes hosts of: docker/sandbox-host built FROM the base of docker/<os>. */
export const SANDBOX_OSES = ['debian11', 'debian12', 'debian13'] as const;
export type SandboxOs = (typeof SANDBOX_OSES)[number];

const NAME = /^[a-z0-9][a-z0-9._-]*$/;
const PACKAGE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const PLUGIN = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;
// A host as ssh would take it: a name, an alias from ~/.ssh/config, or an address; optionally
// user@ in front and :port behind. Nothing a shell would interpret.
const HOST = /^(?:[A-Za-z0-9._-]+@)?(?:[A-Za-z0-9][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$/;

const absolutePath = str({
  expected: 'an absolute path',
  check: (v) =>
    !v.startsWith('/')
      ? `expected an absolute path, got "${v}"`
      : v === '/' || v.split('/').some((part) => part === '..' || part === '.')
        ? `expected an absolute path without "." or ".." parts (and not "/"), got "${v}"`
        : /[\s'"$`\\]/.test(v)
          ? `expected a path without spaces, quotes, "$", "\`" or "\\", got "${v}"`
          : undefined,
});

/** A path inside a release or under <root>/shared: relative, no "..", nothing a shell would expand. */
const innerPath = str({
  expected: 'a relative path',
  check: (v) =>
    v.startsWith('/') ||
    v.split('/').some((part) => part === '..' || part === '.' || part === '') ||
    /[\s'"$`\\*?]/.test(v)
      ? `expected a relative path without "..", ".", empty parts, spaces or shell characters, got "${v}"`
      : undefined,
});

/** A pip requirement specifier such as "markdown==3.3.7" or "uwsgi>=2.0" (no options, no URLs). */
const requirement = str({
  expected: 'a pip requirement such as "markdown==3.3.7"',
  pattern:
    /^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?\s*([<>=!~]=?[^\s;,]+(\s*,\s*[<>=!~]=?[^\s;,]+)*)?$/,
});

/**
 * extensions[].requirements: which of the extension's files pip installs with -r. A file name, a list
 * of them, or none/false (only setup.py or pyproject.toml); absent: found by the builder (README).
 */
const requirementFiles: Validator<string[] | 'auto'> = (node: Node, ctx) => {
  if (isScalar(node) && (node.value === false || node.value === 'none')) return [];
  if (isSeq(node)) return list(innerPath)(node, ctx);
  if (isScalar(node) && typeof node.value === 'string') return [innerPath(node, ctx)];
  return fail(
    ctx,
    node,
    'expected a requirements file name (such as pip-requirements.txt), a list of them, or none',
  );
};

const hook = obj({
  run: required(str({ expected: 'a shell command' })),
  once: withDefault(bool(), () => false),
});

const environment = obj({
  hosts: required(
    list(str({ expected: 'a host name, alias or address ([user@]host[:port])', pattern: HOST }), {
      min: 1,
      what: 'hosts',
    }),
  ),
  user: optional(str({ expected: 'a user name', pattern: /^[a-z_][a-z0-9_.-]*$/i })),
  port: optional(int(1, 65535)),
  ssh_config: optional(str({ expected: 'the path of an OpenSSH client config file' })),
  config_file: optional(
    str({ expected: 'a file name such as production.ini', pattern: /^[A-Za-z0-9][A-Za-z0-9._-]*$/ }),
  ),
  vars: withDefault(
    mapOf(anyValue(), {
      keyPattern: /^[A-Za-z_][A-Za-z0-9_]*$/,
      keyExpected: 'a template variable name (letters, digits, _)',
    }),
    () => ({}),
  ),
  host_vars: withDefault(
    mapOf(
      mapOf(anyValue(), {
        keyPattern: /^[A-Za-z_][A-Za-z0-9_]*$/,
        keyExpected: 'a template variable name (letters, digits, _)',
      }),
    ),
    () => ({}),
  ),
  secrets: optional(str({ expected: 'the path of a YAML or ansible-vault file' })),
  requires: optional(str({ expected: 'the name of another environment' })),
  become: optional(bool()),
  become_user: optional(str({ expected: 'a user name', pattern: /^[a-z_][a-z0-9_.-]*$/i })),
  parallel: withDefault(int(1, 256), () => 10),
  sandbox_os: optional(oneOf(SANDBOX_OSES)),
});

/** Restart recipes known by name; any other value of deploy.restart is a shell command. */
export const RESTART_RECIPES = ['apache-graceful', 'uwsgi-reload'] as const;
export type RestartRecipe = (typeof RESTART_RECIPES)[number];

const USER = /^[a-z_][a-z0-9_.-]*$/i;

const serverFile = obj({
  template: required(
    str({ expected: 'the path of a Jinja2 template, or builtin:NAME for one shipped with ckan-release' }),
  ),
  dest: required(absolutePath),
  mode: withDefault(
    str({ expected: 'an octal file mode such as "0644"', pattern: /^0?[0-7]{3}$/ }),
    () => '0644',
  ),
  owner: withDefault(str({ expected: 'a user name', pattern: USER }), () => 'root'),
  group: withDefault(str({ expected: 'a group name', pattern: USER }), () => 'root'),
  reload: optional(str({ expected: 'a shell command run on the host after this file changed' })),
});

const SERVER_DEFAULTS = {
  files: [],
  apache: { process_group: 'ckan', command: 'apachectl' },
  uwsgi: { pidfile: '/tmp/ckan-uwsgi.pid', start: undefined },
  timeout: 60,
};

export const configSchema = obj({
  project: required(
    str({ expected: 'a project name (lower case letters, digits, ".", "_", "-")', pattern: NAME }),
  ),
  root: withDefault(absolutePath, () => '/usr/lib/ckan'),
  store: optional(
    str({
      expected: 'a directory for the artifact store, or s3://BUCKET/PREFIX',
      check: (v) =>
        v.startsWith('s3://') &&
        !/^s3:\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](\/[A-Za-z0-9!_.*'()/-]*)?$/.test(v)
          ? `expected s3://BUCKET/PREFIX with a valid bucket name (lower case letters, digits, ".", "-"), got "${v}"`
          : undefined,
    }),
  ),
  /** Settings of an S3 store (store: s3://...); each may also come from the AWS SDK's environment. */
  s3: optional(
    obj({
      endpoint: optional(
        str({ expected: 'an http(s) URL of an S3-compatible server', pattern: /^https?:\/\/\S+$/ }),
      ),
      region: optional(str({ expected: 'an AWS region such as eu-west-1', pattern: /^[a-z0-9-]+$/ })),
      profile: optional(str({ expected: 'a profile name of ~/.aws/config', pattern: /^[A-Za-z0-9_.+-]+$/ })),
      force_path_style: optional(bool()),
      /** The local cache of fetched and built artifacts; default .ckan-release/artifacts beside the config. */
      cache: optional(str({ expected: 'a directory' })),
    }),
  ),
  /** Webhooks told when ship, promote and rollback start, succeed or fail. */
  notify: withDefault(
    list(str({ expected: 'an http(s) webhook URL', pattern: /^https?:\/\/\S+$/ }), { what: 'webhook URLs' }),
    () => [],
  ),
  ckan: required(
    obj({
      source: required(str({ expected: 'a git URL or a local path' })),
      ref: required(str({ expected: 'a git tag, branch or commit' })),
    }),
  ),
  builder: withDefault(
    obj({
      os: withDefault(str({ expected: 'a builder OS name', pattern: NAME }), () => 'centos7'),
      python: withDefault(
        str({ expected: 'a python command or path', pattern: /^[A-Za-z0-9_./-]+$/ }),
        () => 'python3',
      ),
      network: withDefault(oneOf(BUILDER_NETWORKS), () => 'none' as const),
      pip: withDefault(
        obj({
          index_url: optional(str({ expected: 'a URL', pattern: /^(https?|file):\/\/\S+$/ })),
          find_links: withDefault(list(str({ expected: 'a directory or URL' })), () => []),
          extra_args: withDefault(list(str({ expected: 'a pip argument' })), () => []),
          // Both reach the base install (CKAN's requirements) and the release's: constraints as pip -c,
          // overrides replace the same package's line in every requirements file read.
          constraints: withDefault(list(requirement), () => []),
          overrides: withDefault(list(requirement), () => []),
        }),
        () => ({ index_url: undefined, find_links: [], extra_args: [], constraints: [], overrides: [] }),
      ),
      extra_requirements: withDefault(list(requirement), () => []),
    }),
    () => ({
      os: 'centos7',
      python: 'python3',
      network: 'none' as const,
      pip: { index_url: undefined, find_links: [], extra_args: [], constraints: [], overrides: [] },
      extra_requirements: [],
    }),
  ),
  extensions: withDefault(
    list(
      obj({
        name: required(
          str({ expected: 'a package name (letters, digits, ".", "_", "-")', pattern: PACKAGE_NAME }),
        ),
        source: required(str({ expected: 'a git URL or a local path' })),
        ref: required(str({ expected: 'a git tag, branch or commit' })),
        plugins: withDefault(list(str({ expected: 'a CKAN plugin name', pattern: PLUGIN })), () => []),
        requirements: withDefault(requirementFiles, () => 'auto' as const),
      }),
      { what: 'extensions' },
    ),
    () => [],
  ),
  patches: optional(str({ expected: 'a directory of patches/<target>/*.patch' })),
  config: required(
    obj({
      template: required(str({ expected: 'the path of a Jinja2 template' })),
      file: withDefault(
        str({ expected: 'a file name such as ckan.ini', pattern: /^[A-Za-z0-9][A-Za-z0-9._-]*$/ }),
        () => 'ckan.ini',
      ),
    }),
  ),
  shared: withDefault(
    list(obj({ path: required(innerPath), link: required(innerPath) }), { what: '{ path, link } entries' }),
    () => [],
  ),
  deploy: required(
    obj({
      keep_releases: withDefault(int(1, 1000), () => 5),
      link: withDefault(oneOf(DEPLOY_LINKS), () => 'hardlink' as const),
      fetch: withDefault(oneOf(FETCH_MODES), () => 'ssh' as const),
      owner: optional(str({ expected: 'a user name', pattern: /^[a-z_][a-z0-9_.-]*$/i })),
      group: optional(str({ expected: 'a group name', pattern: /^[a-z_][a-z0-9_.-]*$/i })),
      become: optional(bool()),
      become_user: optional(str({ expected: 'a user name', pattern: /^[a-z_][a-z0-9_.-]*$/i })),
      restart: required(
        str({
          expected: `a restart recipe (${RESTART_RECIPES.join(', ')}) or a shell command that restarts the web server`,
        }),
      ),
      healthcheck: withDefault(
        obj({
          url: withDefault(
            str({ expected: 'an http(s) URL (may use template variables)', pattern: /^https?:\/\/./ }),
            () => 'http://127.0.0.1/api/3/action/status_show',
          ),
          timeout: withDefault(int(1, 3600), () => 60),
          host: optional(
            str({ expected: 'the Host header to send, e.g. data.example.org (may use template variables)' }),
          ),
        }),
        () => ({ url: 'http://127.0.0.1/api/3/action/status_show', timeout: 60 }),
      ),
      hooks: withDefault(
        obj({
          before_switch: withDefault(list(hook), () => []),
          after_switch: withDefault(list(hook), () => []),
        }),
        () => ({ before_switch: [], after_switch: [] }),
      ),
    }),
  ),
  server: withDefault(
    obj({
      files: withDefault(
        list(serverFile, { what: '{ template, dest, mode, owner, group } entries' }),
        () => [],
      ),
      apache: withDefault(
        obj({
          process_group: withDefault(
            str({ expected: 'a WSGIDaemonProcess name', pattern: /^[A-Za-z0-9_.-]+$/ }),
            () => 'ckan',
          ),
          command: withDefault(
            str({ expected: 'the apachectl command or path', pattern: /^[A-Za-z0-9_./-]+$/ }),
            () => 'apachectl',
          ),
        }),
        () => ({ ...SERVER_DEFAULTS.apache }),
      ),
      uwsgi: withDefault(
        obj({
          pidfile: withDefault(absolutePath, () => SERVER_DEFAULTS.uwsgi.pidfile),
          start: optional(str({ expected: 'a shell command that starts uwsgi when it is not running' })),
        }),
        () => ({ ...SERVER_DEFAULTS.uwsgi }),
      ),
      timeout: withDefault(int(1, 3600), () => SERVER_DEFAULTS.timeout),
    }),
    () => ({
      files: [],
      apache: { ...SERVER_DEFAULTS.apache },
      uwsgi: { ...SERVER_DEFAULTS.uwsgi },
      timeout: SERVER_DEFAULTS.timeout,
    }),
  ),
  environments: required(
    mapOf(environment, {
      keyPattern: /^[a-z][a-z0-9_-]*$/,
      keyExpected: 'lower case letters, digits, "_" and "-", starting with a letter',
      min: 1,
    }),
  ),
});
