import { useEffect, useRef, useState } from "react";

import * as backend from "../lib/backend";
import type { BackendError, ProfileView, Removed } from "../lib/types";
import { useAction } from "../lib/useAction";
import { ErrorNotice } from "./ErrorNotice";
import { RemovedNotice } from "./RemovedNotice";

interface Callbacks {
  /** Called with the demo's profile once it runs. */
  onStarted: (profile: ProfileView) => void;
  /** Called once the demo and its profile are gone. */
  onStopped: () => void;
}

/** Where the demo stands. */
export type DemoState =
  | { status: "idle"; removed?: Removed | null }
  | { status: "starting" }
  | { status: "running"; id: string }
  | { status: "stopping"; id: string }
  | { status: "failed"; error: BackendError };

/** The demo's state and its two actions; one per window, shared by the sidebar's card and the first screen. */
export interface Demo {
  state: DemoState;
  start: () => Promise<void>;
  stop: () => Promise<void>;
}

/**
 * The demo database: a throwaway local PostgreSQL with a small shop schema and a trickle of writes,
 * with a profile filled in for it. It is removed when the app quits or on "Remove".
 */
export function useDemo({ onStarted, onStopped }: Callbacks): Demo {
  // The running demo's profile id, and what the last removal deleted.
  const [id, setId] = useState<string | null>(null);
  const [removed, setRemoved] = useState<Removed | null>(null);
  const { busy, error, run } = useAction();

  useEffect(() => {
    let live = true;
    backend
      .demoProfile()
      .then((id) => live && id && setId(id))
      .catch(() => {});
    return () => {
      live = false;
    };
  }, []);

  const start = async () => {
    setRemoved(null);
    const profile = await run(() => backend.startDemo());
    if (!profile) return;
    setId(profile.id);
    onStarted(profile);
  };

  const stop = async () => {
    const gone = await run(() => backend.stopDemo());
    // The engine lets go of the demo before anything in its removal can fail: after a failed removal
    // none runs, and the card offers a new one with the error.
    setId(null);
    if (gone === undefined) return;
    setRemoved(gone);
    onStopped();
  };

  const state: DemoState = busy
    ? id !== null
      ? { status: "stopping", id }
      : { status: "starting" }
    : error
      ? { status: "failed", error }
      : id !== null
        ? { status: "running", id }
        : { status: "idle", removed };
  return { state, start, stop };
}

/** "Try it with a demo database" in the sidebar: start the demo, see that it runs, remove it. */
export function DemoCard({ demo }: { demo: Demo }) {
  const { state, start } = demo;
  // Removing is one more click: it deletes the database and everything captured from it.
  const [confirming, setConfirming] = useState(false);
  // The question takes the focus on its safe answer ("Keep it"); closing it gives the focus back to
  // "Remove the demo database".
  const keep = useRef<HTMLButtonElement>(null);
  const opener = useRef<HTMLButtonElement>(null);
  const [returnFocus, setReturnFocus] = useState(false);
  useEffect(() => {
    if (confirming) keep.current?.focus();
    else if (returnFocus) {
      opener.current?.focus();
      setReturnFocus(false);
    }
  }, [confirming, returnFocus]);
  const closeConfirm = () => {
    setConfirming(false);
    setReturnFocus(true);
  };
  const stop = () => {
    setConfirming(false);
    return demo.stop();
  };

  return (
    <section className="demo-card" data-testid="demo-card">
      {state.status === "running" || state.status === "stopping" ? (
        <>
          <p className="muted" data-testid="demo-running">
            The demo database is running on this computer, with new orders every second. It is removed when Tidepool
            quits.
          </p>
          {confirming && state.status === "running" ? (
            <div
              className="actions"
              data-testid="demo-stop-confirm"
              role="group"
              aria-label="Remove the demo database"
              onKeyDown={(e) => e.key === "Escape" && closeConfirm()}
            >
              <p className="note" id="demo-stop-what">
                Remove the demo database? You lose its sample tables and rows, its connection profile with its keychain
                entries, and everything captured from it on this machine (collections, change log, consumers). A new
                demo starts from scratch. Nothing else is touched.
              </p>
              <button
                type="button"
                className="danger"
                data-testid="demo-stop-run"
                aria-describedby="demo-stop-what"
                onClick={() => void stop()}
              >
                Remove
              </button>
              <button type="button" className="secondary" data-testid="demo-stop-keep" ref={keep} onClick={closeConfirm}>
                Keep it
              </button>
            </div>
          ) : (
            <button
              type="button"
              className="secondary"
              data-testid="demo-stop"
              ref={opener}
              disabled={state.status === "stopping"}
              onClick={() => setConfirming(true)}
            >
              {state.status === "stopping" ? "Removing…" : "Remove the demo database"}
            </button>
          )}
        </>
      ) : (
        <>
          <p className="muted">No database at hand? A local one with sample tables and live writes:</p>
          <button type="button" data-testid="demo-start" disabled={state.status === "starting"} onClick={() => void start()}>
            {state.status === "starting" ? "Starting a local PostgreSQL…" : "Try it with a demo database"}
          </button>
          {state.status === "idle" && state.removed && <RemovedNotice removed={state.removed} testId="demo-removed" />}
          {state.status === "failed" && (
            <ErrorNotice error={state.error} testId="demo-error">
              <p>The demo needs PostgreSQL's server binaries (Debian: apt-get install postgresql).</p>
            </ErrorNotice>
          )}
        </>
      )}
    </section>
  );
}
