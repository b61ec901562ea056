export function countSshWrites(): { byPort: Map<number, number>; restore(): void };
