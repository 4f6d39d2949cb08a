import type { Demo } from "./DemoCard";

interface Props {
  demo: Demo;
  /** Opens the connection form with its first field focused. */
  onConnect: () => void;
  /** Opens the running demo's profile. */
  onOpenDemo: (id: string) => void;
  /** How many connections are saved (the sidebar lists them). */
  saved: number;
}

/**
 * The first screen while no profile is open: what Tidepool does, in one sentence, and the two ways to
 * start where the eye lands (the demo's own card sits at the bottom of the sidebar).
 */
export function Welcome({ demo, onConnect, onOpenDemo, saved }: Props) {
  const { state } = demo;
  const running = state.status === "running" || state.status === "stopping" ? state.id : null;
  return (
    <section className="card welcome" data-testid="welcome" aria-labelledby="welcome-heading">
      <h2 id="welcome-heading">Start here</h2>
      <p data-testid="welcome-what">
        Tidepool copies every insert, update and delete from your PostgreSQL database, as it happens, into a store on
        this computer that you can browse, export and hand on to other programs.
      </p>
      <div className="welcome-choices">
        <div className="welcome-choice">
          <button type="button" data-testid="welcome-connect" onClick={onConnect}>
            Connect your database
          </button>
          <span className="hint">Fill in the form below, or paste a connection string.</span>
        </div>
        <div className="welcome-choice">
          <button
            type="button"
            className="secondary"
            data-testid="welcome-demo"
            disabled={state.status === "starting" || state.status === "stopping"}
            onClick={() => (running ? onOpenDemo(running) : void demo.start())}
          >
            {running ? "Open the demo" : state.status === "starting" ? "Starting the demo…" : "Try the demo"}
          </button>
          <span className="hint">A PostgreSQL on this computer with sample tables and live writes, removed when Tidepool quits.</span>
        </div>
      </div>
      {saved > 0 && (
        <p className="hint" data-testid="welcome-saved">
          {saved === 1
            ? "Or open your saved connection on the left."
            : `Or open one of your ${saved} saved connections on the left.`}
        </p>
      )}
      {state.status === "failed" && (
        <p className="field-error" role="alert" data-testid="welcome-demo-error">
          The demo could not start: {state.error.message}
        </p>
      )}
    </section>
  );
}
