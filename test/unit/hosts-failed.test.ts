// HostsFailedError: the one rule for the exit code of an operation that failed on several hosts.
import { describe, expect, it } from 'vitest';
import { HostsFailedError, OperationError, UsageError } from '../../src/errors.js';
import { allOrThrow } from '../../src/deploy/session.js';

describe('HostsFailedError', () => {
  it('is exit 2 (with the first hint) only when every failure was bad input, else exit 1', () => {
    const usage = (hint: string) => new UsageError('bad', hint);
    expect(
      new HostsFailedError('m', [
        { host: 'a', error: usage('fix a') },
        { host: 'b', error: usage('fix b') },
      ]),
    ).toMatchObject({ exitCode: 2, hint: 'fix a', message: 'm' });
    expect(
      new HostsFailedError('m', [
        { host: 'a', error: usage('fix a') },
        { host: 'b', error: new OperationError('down') },
      ]),
    ).toMatchObject({ exitCode: 1, hint: undefined });
    expect(new HostsFailedError('m', [{ host: 'a', error: new Error('?') }]).exitCode).toBe(1);
    expect(new HostsFailedError('m', [{ host: 'a', error: usage('x') }], 'own hint').hint).toBe('own hint');
  });

  it('allOrThrow: the values, or the failures named by host under one message', () => {
    const hosts = [{ name: 'a' }, { name: 'b' }];
    expect(
      allOrThrow(
        hosts,
        [
          { status: 'fulfilled', value: 1 },
          { status: 'fulfilled', value: 2 },
        ],
        'x',
      ),
    ).toEqual([1, 2]);
    expect(() =>
      allOrThrow(
        hosts,
        [
          { status: 'fulfilled', value: 1 },
          { status: 'rejected', reason: new UsageError('no python') },
        ],
        'cannot read the state of every host of prod',
      ),
    ).toThrow(
      expect.objectContaining({
        message: 'cannot read the state of every host of prod:\n  b: no python',
        exitCode: 2,
      }) as Error,
    );
  });
});
