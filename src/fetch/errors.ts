import { AutotestError } from '../errors.js';

/**
 * No repository could provide a package. `failures` are the repositories that failed (down,
 * refused, corrupt, a signature not believed), leaving out those that simply lack it.
 */
export class AllRepositoriesFailed extends AutotestError {
  readonly failures: readonly string[];

  constructor(message: string, options: { failures: readonly string[]; hint: string }) {
    super('ERR_ALL_REPOSITORIES_FAILED', message, { hint: options.hint });
    this.failures = options.failures;
  }
}
