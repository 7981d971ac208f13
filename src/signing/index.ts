export { readSigningKey, parseOpenSshEd25519, signingKeyFrom, type SigningKey } from './openssh-key.js';
export { signSshsig, verifySshsig, signerOf, fingerprint, type SshsigVerdict } from './sshsig.js';
export { parseAllowedSigners, readTrustedKeys, type TrustedKey } from './allowed-signers.js';
export {
  SIGNATURE_NAMESPACE,
  loadIndexSigning,
  nextManifestHeader,
  signManifest,
  readVerifiedIndex,
  verifyKeptIndex,
  type IndexSigning,
  type IndexTrust,
  type SerialMemory,
  type SignedPair,
  type VerifiedIndex,
} from './index-signature.js';
