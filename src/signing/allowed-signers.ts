import { readFile } from 'node:fs/promises';
import { AutotestError, describeError, errnoCode } from '../errors.js';
import { ed25519FromBlob } from './wire.js';

/** A key of an allowed_signers file that may sign for the namespace asked. */
export interface TrustedKey {
  publicBlob: Buffer;
  /** The line it came from, for messages. */
  line: number;
}

/** Splits a line on blanks, keeping double-quoted parts (`namespaces="a,b"`) whole. */
function fields(line: string): string[] {
  return line.match(/(?:[^\s"]+|"[^"]*")+/g) ?? [];
}

function namespacesOption(options: string): string[] | undefined {
  const match = /(?:^|,)namespaces="([^"]*)"/i.exec(options);
  return match?.[1]?.split(',').map((item) => item.trim());
}

/**
 * The keys of an allowed_signers file (ssh-keygen(1), "ALLOWED SIGNERS") trusted for
 * `namespace`: each line is `principals [options] keytype base64 [comment]`. Every principal
 * is accepted (a lab trusts its keys, not names); a `namespaces=` option that leaves the
 * namespace out, a `cert-authority` line and a key type other than ed25519 are left out, as
 * ssh-keygen would not accept them for us either. Throws a plain Error naming the line.
 */
export function parseAllowedSigners(text: string, namespace: string): { keys: TrustedKey[]; skipped: string[] } {
  const keys: TrustedKey[] = [];
  const skipped: string[] = [];
  for (const [index, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const parts = fields(line);
    const typeAt = parts.findIndex((part, at) => at > 0 && /^(ssh-|ecdsa-|sk-)/.test(part));
    const base64 = typeAt < 0 ? undefined : parts[typeAt + 1];
    if (typeAt < 0 || base64 === undefined) throw new Error(`line ${(index + 1).toString()}: expected "principals [options] keytype key"`);
    const options = parts.slice(1, typeAt).join(' ');
    const where = `line ${(index + 1).toString()}`;
    if (/(?:^|,)cert-authority(?:,|$)/i.test(options)) {
      skipped.push(`${where}: cert-authority keys are not supported`);
      continue;
    }
    const namespaces = namespacesOption(options);
    if (namespaces && !namespaces.includes(namespace)) {
      skipped.push(`${where}: not allowed for the namespace ${namespace}`);
      continue;
    }
    const blob = Buffer.from(base64, 'base64');
    if (parts[typeAt] !== 'ssh-ed25519' || !ed25519FromBlob(blob)) {
      skipped.push(`${where}: ${parts[typeAt] ?? '?'} keys are not supported (ed25519 only)`);
      continue;
    }
    keys.push({ publicBlob: blob, line: index + 1 });
  }
  return { keys, skipped };
}

/** trusted_keys read and parsed, or a config error naming where it was set (`setAt`). */
export async function readTrustedKeys(file: string, setAt: string, namespace: string): Promise<{ keys: TrustedKey[]; text: string; warnings: string[] }> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new AutotestError('ERR_CONFIG', `${setAt} = ${file}: cannot read it (${errnoCode(error) ?? describeError(error)})`, {
      hint: 'name a readable allowed_signers file (one "autotest ssh-ed25519 KEY" line per trusted key)',
      cause: error,
    });
  }
  let parsed;
  try {
    parsed = parseAllowedSigners(text, namespace);
  } catch (error) {
    throw new AutotestError('ERR_CONFIG', `${setAt} = ${file}: ${describeError(error)}`, { hint: 'see "ALLOWED SIGNERS" in ssh-keygen(1)', cause: error });
  }
  if (parsed.keys.length === 0) {
    throw new AutotestError(
      'ERR_CONFIG',
      `${setAt} = ${file}: holds no ed25519 key usable for ${namespace}${parsed.skipped.length > 0 ? ` (${parsed.skipped.join('; ')})` : ''}`,
      {
        hint: 'add a line "autotest ssh-ed25519 KEY" with the public key of the packager\'s signing_key',
      },
    );
  }
  return { keys: parsed.keys, text, warnings: parsed.skipped.map((why) => `${setAt} = ${file}: ${why}; ignored`) };
}
