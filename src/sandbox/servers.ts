// The web servers a sandbox host can run; its own module so that the command line can offer them
// without loading the sandbox (Docker, tar).
export const SANDBOX_SERVERS = ['apache', 'uwsgi'] as const;
export type SandboxServer = (typeof SANDBOX_SERVERS)[number];
