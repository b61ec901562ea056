// One host agent command run one-shot, as the tool runs it (`python agent COMMAND JSON`, stdin, one
// JSON line out): the unit tests of the agent's commands share it.
import { execFile } from 'node:child_process';
import { AGENT_SCRIPT } from '../../src/deploy/agent.js';

export interface Answer {
  code: number;
  json: Record<string, unknown>;
  stderr: string;
}

/** `python ...pre COMMAND JSON` with stdin; the last line of its output is the answer. */
export function runAgent(
  python: string,
  pre: string[],
  command: string,
  args: unknown,
  stdin?: Buffer | string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      python,
      [...pre, command, JSON.stringify(args)],
      { encoding: 'utf8', maxBuffer: 16 << 20, env },
      (error, stdout, stderr) => {
        const code = error ? Number((error as { code?: number }).code ?? 1) : 0;
        const last = stdout.trim().split('\n').pop() ?? '';
        try {
          resolve({ code, json: JSON.parse(last) as Record<string, unknown>, stderr });
        } catch {
          reject(new Error(`agent ${command} (exit ${code}) printed no JSON: ${stdout}\n${stderr}`));
        }
      },
    );
    child.stdin!.on('error', () => undefined); // a refusal may come before all of stdin is read
    child.stdin!.end(stdin ?? '');
  });
}

/** The agent script itself, without writing bytecode into the checkout. */
export function agent(
  python: string,
  command: string,
  args: unknown,
  stdin?: Buffer | string,
): Promise<Answer> {
  return runAgent(python, [AGENT_SCRIPT], command, args, stdin, {
    ...process.env,
    PYTHONDONTWRITEBYTECODE: '1',
  });
}

/** agent(), failing unless it exits 0; its answer. */
export async function ok(python: string, command: string, args: unknown, stdin?: Buffer | string) {
  const r = await agent(python, command, args, stdin);
  if (r.code !== 0) throw new Error(`agent ${command} exit ${r.code}: ${JSON.stringify(r.json)} ${r.stderr}`);
  return r.json;
}
