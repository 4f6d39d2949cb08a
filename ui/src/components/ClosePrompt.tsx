import { useEffect, useRef, useState } from "react";

import * as backend from "../lib/backend";
import { useAction } from "../lib/useAction";
import { ErrorNotice } from "./ErrorNotice";

/**
 * Asks what closing the window while a capture runs should mean: keep capturing in the background
 * (the window is minimized, the tray icon shows the capture), or stop every capture and quit (slots
 * stay, so the next start resumes without gaps). The demo database is removed on quit, so while it
 * runs the prompt says there is nothing of it to resume, instead of promising it.
 */
export function ClosePrompt() {
  const [open, setOpen] = useState(false);
  const { busy, error, run } = useAction();
  // Whether the demo database runs (it goes when the app quits); asked each time the prompt opens.
  const [demo, setDemo] = useState(false);
  const first = useRef<HTMLButtonElement>(null);

  useEffect(() => {
    let live = true;
    let unlisten: (() => void) | null = null;
    backend
      .onCloseRequested(() => {
        if (!live) return;
        setOpen(true);
        backend.demoProfile().then(
          (id) => live && setDemo(id !== null),
          () => live && setDemo(false),
        );
      })
      .then((stop) => (live ? (unlisten = stop) : stop()));
    return () => {
      live = false;
      unlisten?.();
    };
  }, []);

  useEffect(() => {
    if (open) first.current?.focus();
  }, [open]);

  if (!open) return null;
  const answer = async (action: () => Promise<void>, close: boolean) => {
    // `true` stands for a command that answers nothing: undefined is a failure.
    const answered = await run(async () => {
      await action();
      return true;
    });
    if (answered && close) setOpen(false);
  };
  return (
    <div className="modal-backdrop">
      <div
        className="modal"
        role="alertdialog"
        aria-modal="true"
        aria-labelledby="close-title"
        data-testid="close-prompt"
        onKeyDown={(e) => e.key === "Escape" && setOpen(false)}
      >
        <h2 id="close-title">A capture is running</h2>
        <p>
          Keep capturing in the background (the window is minimized; where your desktop shows tray icons, Tidepool's
          shows the capture and can open or stop it), or stop and quit?
        </p>
        {demo ? (
          <p className="warning" data-testid="close-demo">
            The demo database is removed when Tidepool quits, with everything captured from it: there is nothing to
            resume later. Keep capturing in the background to keep it. Captures of your own databases keep their
            replication slots and resume at their next start.
          </p>
        ) : (
          <p data-testid="close-resume">
            Stopping keeps the replication slot: the next start resumes where it stopped, while the server keeps WAL for
            the slot meanwhile.
          </p>
        )}
        <div className="row">
          <button
            ref={first}
            type="button"
            data-testid="close-keep"
            disabled={busy}
            onClick={() => void answer(backend.keepCapturingInBackground, true)}
          >
            Keep capturing in the background
          </button>
          <button
            type="button"
            className="danger"
            data-testid="close-stop"
            disabled={busy}
            onClick={() => void answer(backend.stopCapturesAndQuit, false)}
          >
            {busy ? "Stopping…" : demo ? "Stop, remove the demo and quit" : "Stop capturing and quit"}
          </button>
          <button type="button" className="secondary" data-testid="close-cancel" disabled={busy} onClick={() => setOpen(false)}>
            Cancel
          </button>
        </div>
        {error && <ErrorNotice error={error} testId="close-error" />}
      </div>
    </div>
  );
}
