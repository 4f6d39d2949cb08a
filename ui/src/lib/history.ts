// Capture status over time, per profile, for the Monitor charts. Fed by the engine's pushed
// `capture-status` events from app start, so switching screens keeps the history.
import type { RunStatus } from "./types";

/** One point of a chart. */
export interface Sample {
  /** Seconds since the Unix epoch. */
  at: number;
  changesPerSecond: number;
  lagMs: number | null;
}

/** About ten minutes at the engine's pace of one status a second. */
export const KEEP = 600;

const EMPTY: Sample[] = [];
const samples = new Map<string, Sample[]>();
const listeners = new Set<() => void>();

/** Records a status (called for every pushed status). */
export function record(status: RunStatus, now: number = Date.now()) {
  if (status.state !== "streaming") return;
  // A new array each time: React compares snapshots by identity.
  const list = [...(samples.get(status.profile) ?? EMPTY), { at: now / 1000, changesPerSecond: status.changesPerSecond, lagMs: status.lagMs }];
  samples.set(status.profile, list.length > KEEP ? list.slice(list.length - KEEP) : list);
  listeners.forEach((l) => l());
}

/** The profile's samples, oldest first. */
export const historyOf = (profile: string): Sample[] => samples.get(profile) ?? EMPTY;

/** Calls `listener` after each new sample; returns the unsubscribe function. */
export function subscribe(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** Forgets everything (tests). */
export function clearHistory() {
  samples.clear();
}
