// npm run engine: make sure a Docker engine answers and debian:bookworm-slim exists (used by CI and the
// demo; tests do the same on their own).
import { ensureBaseImage, ensureEngine } from '../src/docker/engine.js';
import { CkanReleaseError } from '../src/errors.js';

const say = (line: string) => console.log(`engine: ${line}`);
try {
  const docker = await ensureEngine(say);
  const version = await docker.version();
  say(`Docker ${version.Version} answers`);
  await ensureBaseImage(docker, say);
} catch (e) {
  console.error(`engine: ${(e as Error).message}`);
  if (e instanceof CkanReleaseError && e.hint) console.error(`  hint: ${e.hint}`);
  process.exit(1);
}
