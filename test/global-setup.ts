// Nothing global yet: integration tests start what they need (see test/support/docker.ts).
export default function setup(): void {}
