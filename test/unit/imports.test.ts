// The shape of src/ as its imports say (type-only imports count too): no import cycle; artifact/ never
// imports builder/; the planner (plan.ts) and the host layout (layout.ts) do no I/O, so the plan is a
// pure function of the facts (README "Code map").
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = path.resolve('src');

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? files(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : [],
  );
}

/** Every module a file imports or re-exports from: relative ones as src paths, others by name. */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const specs = [...text.matchAll(/^\s*(?:import|export)\b[^'"]*?from\s+'([^']+)'/gms)].map((m) => m[1]!);
  specs.push(...[...text.matchAll(/^import\s+'([^']+)'/gm)].map((m) => m[1]!));
  return specs.map((s) =>
    s.startsWith('.') ? path.relative(SRC, path.resolve(path.dirname(file), s.replace(/\.js$/, '.ts'))) : s,
  );
}

const graph = new Map(files(SRC).map((f) => [path.relative(SRC, f), importsOf(f)]));

function cycles(): string[][] {
  const found: string[][] = [];
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (n: string) => {
    state.set(n, 'open');
    stack.push(n);
    for (const m of graph.get(n) ?? []) {
      if (!graph.has(m)) continue;
      if (state.get(m) === 'open') found.push([...stack.slice(stack.indexOf(m)), m]);
      else if (!state.has(m)) visit(m);
    }
    stack.pop();
    state.set(n, 'done');
  };
  for (const n of graph.keys()) if (!state.has(n)) visit(n);
  return found;
}

describe('src/ imports', () => {
  it('reads the imports it checks', () => {
    expect(graph.get('cli.ts')).toContain('commands/index.ts');
    expect(graph.get('deploy/deploy.ts')).toEqual(expect.arrayContaining(['plan.ts', 'deploy/server.ts']));
  });

  it('has no import cycle', () => {
    expect(cycles().map((c) => c.join(' > '))).toEqual([]);
  });

  it('artifact/ does not import builder/', () => {
    const bad = [...graph].filter(
      ([f, deps]) => f.startsWith('artifact/') && deps.some((d) => d.startsWith('builder/')),
    );
    expect(bad).toEqual([]);
  });

  it('the planner and the layout do no I/O: they import only pure modules', () => {
    const pure = new Set([
      'plan.ts',
      'layout.ts',
      'artifact/adopted.ts',
      'artifact/id.ts',
      'artifact/manifest.ts',
    ]);
    for (const f of ['plan.ts', 'layout.ts'])
      for (const d of graph.get(f)!) expect(pure.has(d) || d === 'node:path', `${f} imports ${d}`).toBe(true);
    for (const f of ['artifact/adopted.ts', 'artifact/id.ts'])
      for (const d of graph.get(f)!) expect(pure.has(d), `${f} imports ${d}`).toBe(true);
  });
});
