// Every shipped builder docker/<os>/Dockerfile keeps the image contract the builder relies on (see the
// header of docker/debian12/Dockerfile): checked on the Dockerfiles' instructions, also for the images
// that cannot be built here (ubuntu*, el*, centos7). The checker is shown to catch each broken rule.
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { builderOses } from '../../src/config/load.js';
import { SANDBOX_OSES } from '../../src/config/schema.js';
import { DEBOOTSTRAP_SUITES, dockerfileBase } from '../../src/docker/engine.js';

const DOCKER = path.resolve('docker');
const SUITES: Record<string, string> = { debian11: 'bullseye', debian12: 'bookworm', debian13: 'trixie' };

interface Instruction {
  cmd: string;
  args: string;
}

/** Dockerfile instructions: comments dropped, backslash continuations joined. */
function instructions(text: string): Instruction[] {
  const out: Instruction[] = [];
  let pending = '';
  for (const raw of text.split('\n')) {
    if (/^\s*#/.test(raw)) continue;
    const line = raw.replace(/\s+$/, '');
    if (line.endsWith('\\')) {
      pending += `${line.slice(0, -1)} `;
      continue;
    }
    const full = (pending + line).trim();
    pending = '';
    if (!full) continue;
    const m = /^(\w+)\s+([\s\S]*)$/.exec(full);
    if (m) out.push({ cmd: m[1]!.toUpperCase(), args: m[2]! });
  }
  return out;
}

/** KEY=VALUE pairs of ENV / LABEL / ARG arguments (values unquoted). */
function pairs(args: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of args.matchAll(/([A-Za-z0-9_.-]+)=("([^"]*)"|(\S*))/g)) out[m[1]!] = m[3] ?? m[4]!;
  return out;
}

/** What breaks the contract in docker/<os>/ (its Dockerfile text and whether make-venv is there). */
function contractProblems(os: string, text: string, makeVenv: string | undefined): string[] {
  const problems: string[] = [];
  const ins = instructions(text);
  const first = ins[0];
  const base = dockerfileBase(text);
  if (!first || first.cmd !== 'ARG' || !/^BASE=\S+$/.test(first.args))
    problems.push('the first instruction is not ARG BASE=<image>');
  // The image is the last stage, FROM ${BASE}; earlier stages (e.g. one that only fetches wheels) are
  // named, and start from an ARG image too, so debootstrap or a pull can provide it.
  const from = ins.filter((i) => i.cmd === 'FROM');
  if (
    from.filter((f) => /^\$\{?BASE\}?$/.test(f.args)).length !== 1 ||
    !/^\$\{?BASE\}?$/.test(from.at(-1)?.args ?? '')
  )
    problems.push('not exactly one FROM ${BASE}, the last stage');
  const declared = ins
    .filter((i, n) => i.cmd === 'ARG' && n < ins.indexOf(from[0]!))
    .map((i) => i.args.split('=')[0]);
  for (const f of from.slice(0, -1))
    if (!/^\$\{?(\w+)\}?\s+AS\s+\w+$/i.test(f.args) || !declared.includes(/\w+/.exec(f.args)![0]))
      problems.push(`stage FROM ${f.args} is not FROM \${<ARG declared before>} AS <name>`);
  const fromAt = ins.lastIndexOf(from.at(-1)!);
  const pythonArg = ins.map((i) => i.cmd === 'ARG' && /^PYTHON(=|$)/.test(i.args)).lastIndexOf(true);
  if (pythonArg < fromAt)
    problems.push('no ARG PYTHON after FROM (the builder passes builder.python as PYTHON)');
  const pythonDefault = pythonArg >= 0 ? (pairs(ins[pythonArg]!.args).PYTHON ?? '') : '';
  const runs = ins.filter((i) => i.cmd === 'RUN').map((i) => i.args);
  const refusal = runs.find(
    (r) => /\$\{?PYTHON\b/.test(r) && /exit 1/.test(r) && /offers builder\.python/.test(r),
  );
  if (!refusal) problems.push('no RUN that refuses an unknown PYTHON (exit 1, "offers builder.python")');
  else if (!refusal.includes(`docker/${os} offers`))
    problems.push(`the PYTHON refusal does not name docker/${os}`);

  const env = Object.assign({}, ...ins.filter((i) => i.cmd === 'ENV').map((i) => pairs(i.args))) as Record<
    string,
    string
  >;
  const py = env.CKAN_RELEASE_PYTHON;
  if (py === undefined) problems.push('no ENV CKAN_RELEASE_PYTHON');
  else {
    const resolved = py.replace(/\$\{PYTHON\}|\$PYTHON\b/g, pythonDefault);
    if (!/^\/[A-Za-z0-9_./-]+$/.test(resolved) || /\/\.\.?(\/|$)/.test(resolved))
      problems.push(`CKAN_RELEASE_PYTHON ${py} is not an absolute path (with PYTHON=${pythonDefault})`);
  }
  if (env.PIP_DISABLE_PIP_VERSION_CHECK !== '1') problems.push('PIP_DISABLE_PIP_VERSION_CHECK is not 1');

  if (!ins.some((i) => i.cmd === 'COPY' && /^make-venv\s+\/opt\/ckan-release\/bin\/make-venv$/.test(i.args)))
    problems.push('make-venv is not copied to /opt/ckan-release/bin/make-venv');
  if (makeVenv === undefined) problems.push('no executable make-venv beside the Dockerfile');
  else if (
    !/"\$CKAN_RELEASE_PYTHON" -m venv (--[a-z-]+ )*"\$1"/.test(makeVenv) ||
    !/--no-index --find-links \/opt\/ckan-release\/wheels/.test(makeVenv)
  )
    problems.push('make-venv does not make the venv with $CKAN_RELEASE_PYTHON and seed it offline');

  const wheels = ins
    .filter((i) => (i.cmd === 'RUN' || i.cmd === 'COPY') && i.args.includes('/opt/ckan-release/wheels'))
    .map((i) => (i.cmd === 'COPY' ? runs.join(' ') : i.args));
  for (const w of ['pip', 'setuptools', 'wheel'])
    if (!wheels.some((r) => new RegExp(`\\b${w}[-=<']`).test(r)))
      problems.push(`no RUN puts a ${w} wheel into /opt/ckan-release/wheels`);
  for (const r of wheels)
    for (const m of r.matchAll(/setuptools(==|<)(\d+)/g))
      if (Number(m[2]) > 82 || (m[1] === '==' && Number(m[2]) >= 82))
        problems.push(`setuptools ${m[1]}${m[2]} allows 82+ (no pkg_resources, which CKAN imports)`);
  const installs = runs.join(' ');
  for (const [what, re] of [
    ['git', /\bgit\b/],
    ['patch', /\bpatch\b/],
    ['tar', /\btar\b/],
    ['gzip', /\bgzip\b/],
    ['gcc', /\bgcc\b/],
    ['libpq headers', /\blibpq-dev\b|\blibpq-devel\b|\bpostgresql-devel\b/],
    ['libxml2 headers', /\blibxml2-dev(el)?\b/],
    ['libxslt headers', /\blibxslt1?-dev(el)?\b/],
  ] as const)
    if (!re.test(installs)) problems.push(`${what} is not installed`);

  const labels = Object.assign(
    {},
    ...ins.filter((i) => i.cmd === 'LABEL').map((i) => pairs(i.args)),
  ) as Record<string, string>;
  if (labels['org.ckan-release.builder-os'] !== os)
    problems.push(`LABEL org.ckan-release.builder-os is ${labels['org.ckan-release.builder-os']}, not ${os}`);
  if (SUITES[os] && DEBOOTSTRAP_SUITES[base ?? ''] !== SUITES[os])
    problems.push(`BASE ${base} is not the ${SUITES[os]} image debootstrap can make`);
  return problems;
}

function read(os: string): { text: string; makeVenv: string | undefined } {
  const dir = path.join(DOCKER, os);
  const mv = path.join(dir, 'make-venv');
  const executable = existsSync(mv) && (statSync(mv).mode & 0o111) === 0o111;
  return {
    text: readFileSync(path.join(dir, 'Dockerfile'), 'utf8'),
    makeVenv: executable ? readFileSync(mv, 'utf8') : undefined,
  };
}

/** Every docker/<os>/Dockerfile shipped with the tool (what builder.os accepts without a project one). */
const SHIPPED = builderOses('/nonexistent-project');

describe('shipped builder images', () => {
  it('include the documented OSes, and README names every one', () => {
    expect(SHIPPED).toEqual(
      expect.arrayContaining([
        'centos7',
        'debian11',
        'debian12',
        'debian13',
        'el8',
        'el9',
        'ubuntu2204',
        'ubuntu2404',
      ]),
    );
    const readme = readFileSync('README.md', 'utf8');
    for (const os of SHIPPED) expect(readme, os).toContain(`\`docker/${os}\``);
  });

  it.each(SHIPPED)('docker/%s keeps the image contract', (os) => {
    const { text, makeVenv } = read(os);
    expect(contractProblems(os, text, makeVenv)).toEqual([]);
  });

  it('every sandbox OS has a builder whose base debootstrap can make', () => {
    for (const os of SANDBOX_OSES)
      expect(DEBOOTSTRAP_SUITES[dockerfileBase(read(os).text) ?? '']).toBe(SUITES[os]);
  });
});

describe('the contract check', () => {
  const { text, makeVenv } = read('debian12');
  const broken = (from: string | RegExp, to: string, os = 'debian12', mv = makeVenv) => {
    const t = text.replace(from, to);
    expect(t).not.toBe(text);
    return contractProblems(os, t, mv);
  };

  it('catches each broken rule', () => {
    expect(broken('ARG BASE=debian:bookworm-slim\n', '')).toContain(
      'the first instruction is not ARG BASE=<image>',
    );
    expect(broken('FROM ${BASE}', 'FROM debian:bookworm-slim')).toContain(
      'not exactly one FROM ${BASE}, the last stage',
    );
    const d11 = read('debian11');
    expect(
      contractProblems(
        'debian11',
        d11.text.replace('FROM ${WHEELS} AS wheels', 'FROM debian:bookworm-slim AS wheels'),
        d11.makeVenv,
      ),
    ).toContain('stage FROM debian:bookworm-slim AS wheels is not FROM ${<ARG declared before>} AS <name>');
    expect(broken('CKAN_RELEASE_PYTHON=/usr/bin/python3', 'CKAN_RELEASE_PYTHON=python3')).toContain(
      'CKAN_RELEASE_PYTHON python3 is not an absolute path (with PYTHON=python3)',
    );
    expect(
      broken('COPY make-venv /opt/ckan-release/bin/make-venv', 'COPY make-venv /usr/local/bin/'),
    ).toContain('make-venv is not copied to /opt/ckan-release/bin/make-venv');
    expect(contractProblems('debian12', text, undefined)).toContain(
      'no executable make-venv beside the Dockerfile',
    );
    expect(broken(' libxslt1-dev', '')).toContain('libxslt headers is not installed');
    expect(broken('/usr/share/python-wheels/wheel-*.whl', '')).toContain(
      'no RUN puts a wheel wheel into /opt/ckan-release/wheels',
    );
    expect(broken('builder-os=debian12', 'builder-os=debian11')).toContain(
      'LABEL org.ckan-release.builder-os is debian11, not debian12',
    );
    expect(broken('debian:bookworm-slim', 'debian:trixie-slim')).toContain(
      'BASE debian:trixie-slim is not the bookworm image debootstrap can make',
    );
    expect(broken('docker/debian12 offers', 'docker/debian11 offers')).toContain(
      'the PYTHON refusal does not name docker/debian12',
    );
    const el = read('el9');
    expect(
      contractProblems('el9', el.text.replace("'setuptools==78.1.1'", "'setuptools==82.0.0'"), el.makeVenv),
    ).toContain('setuptools ==82 allows 82+ (no pkg_resources, which CKAN imports)');
    expect(contractProblems('el9', el.text.replace('ARG PYTHON=python3.11\n', ''), el.makeVenv)).toContain(
      'no ARG PYTHON after FROM (the builder passes builder.python as PYTHON)',
    );
  });
});
