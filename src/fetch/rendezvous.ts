import { createHash } from 'node:crypto';
import { memberKey, type FetchLocation, type Location } from '../config/index.js';

/** A member's score for a package: the first 8 bytes, big-endian, of sha256(member URL + "\n" + file name). */
export function rendezvousScore(member: string, file: string): bigint {
  return createHash('sha256').update(`${member}\n${file}`).digest().readBigUInt64BE(0);
}

/**
 * The members of a group in the order to try them for `file`: highest score first, ties by
 * position. Rendezvous (highest random weight) hashing: when a member goes, only the packages
 * it came first for move, each to its own next choice, not most of them as `hash % N` would.
 */
export function rankMembers<T>(members: readonly T[], keyOf: (member: T) => string, file: string): T[] {
  return members
    .map((member, position) => ({ member, position, score: rendezvousScore(keyOf(member), file) }))
    .sort((a, b) => (a.score === b.score ? a.position - b.position : a.score > b.score ? -1 : 1))
    .map(({ member }) => member);
}

/** fetch_location in the order to try for `file`: the items in order, each group's members ranked for it. */
export function orderForPackage(locations: readonly FetchLocation[], file: string): Location[] {
  return locations.flatMap((location) => (location.kind === 'group' ? rankMembers(location.members, memberKey, file) : [location]));
}
