// npm run fixtures [-- DIR]: generates the test fixtures (fixture CKAN and extension git repositories,
// the wheelhouse) from test/fixtures/python into DIR (default examples/demo/.fixtures), rebuilding only
// what the sources changed. See test/support/fixtures.ts.

import path from 'node:path';
import { DEFAULT_FIXTURES_DIR, ensureFixtures } from '../test/support/fixtures.js';

const dir = process.argv[2] ?? DEFAULT_FIXTURES_DIR;

try {
  const fx = await ensureFixtures(dir);
  const rel = (p: string) => path.relative(process.cwd(), p) || '.';
  console.log(`fixtures in ${rel(fx.dir)}`);
  for (const [name, repo] of Object.entries(fx.repos)) {
    const state = fx.changed.includes(`git/${name}`) ? 'built' : 'up to date';
    console.log(`  git/${name} (${state}, branch ${repo.branch})`);
    for (const [tag, commit] of Object.entries(repo.tags)) console.log(`    ${tag}  ${commit}`);
  }
  console.log(`  wheelhouse (${fx.changed.includes('wheelhouse') ? 'built' : 'up to date'})`);
  for (const wheel of fx.wheels) console.log(`    ${path.basename(wheel)}`);
  console.log(fx.changed.length > 0 ? `rebuilt: ${fx.changed.join(', ')}` : 'nothing to do');
} catch (e) {
  console.error(`fixtures: ${e instanceof Error ? e.message : String(e)}`);
  process.exitCode = 1;
}
