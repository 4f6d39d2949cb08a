import logo from "../../icons/tidepool.svg";
import { useCallback, useEffect, useState } from "react";

import { CapturePanel } from "./components/CapturePanel";
import { ClosePrompt } from "./components/ClosePrompt";
import { CollectionsPanel } from "./components/CollectionsPanel";
import { ConsumersPanel } from "./components/ConsumersPanel";
import { DemoCard, useDemo } from "./components/DemoCard";
import { MonitorPanel } from "./components/MonitorPanel";
import { ErrorNotice } from "./components/ErrorNotice";
import { ProfileEditor } from "./components/ProfileEditor";
import { ProfileList } from "./components/ProfileList";
import { RemovedNotice } from "./components/RemovedNotice";
import { SettingsPanel } from "./components/SettingsPanel";
import { SetupPanel } from "./components/SetupPanel";
import { TablesPanel } from "./components/TablesPanel";
import { Welcome } from "./components/Welcome";
import * as backend from "./lib/backend";
import { record } from "./lib/history";
import type { BackendError, ProfileView, Removed } from "./lib/types";

type Tab = "connection" | "setup" | "tables" | "capture" | "collections" | "consumers" | "monitor";

const TAB_TITLES: Record<Tab, string> = {
  connection: "Connection",
  setup: "Setup",
  tables: "Tables",
  capture: "Capture",
  collections: "Collections",
  consumers: "Consumers",
  monitor: "Monitor",
};
/** `form` is set once the user chose to fill in a new connection (the first screen's welcome then gives way). */
type View = { screen: "profile"; id: string | null; tab?: Tab; form?: boolean } | { screen: "settings" };

/** The key of the connection form: a saved profile's id, or a new form's number (each New is a fresh form). */
const editorKey = (id: string | null, newForms: number) => id ?? `new-${newForms}`;

export function App() {
  const [profiles, setProfiles] = useState<ProfileView[] | null>(null);
  const [loadError, setLoadError] = useState<BackendError | null>(null);
  const [view, setView] = useState<View>({ screen: "profile", id: null });
  // What the last profile removal deleted, shown until another profile is opened.
  const [removed, setRemoved] = useState<Removed | null>(null);
  // Counts "New" clicks: each one mounts a fresh form, so nothing half-typed, autofilled or failed
  // survives it (clicking New on a new form would otherwise keep the same form).
  const [newForms, setNewForms] = useState(0);
  const newForm = () => {
    setNewForms((n) => n + 1);
    setView({ screen: "profile", id: null, form: true });
  };
  useEffect(() => {
    if (view.screen !== "profile" || view.id !== null) setRemoved(null);
  }, [view]);

  const reload = useCallback(async () => {
    try {
      setProfiles(await backend.listProfiles());
      setLoadError(null);
    } catch (error) {
      setLoadError(error as BackendError);
      setProfiles([]);
    }
  }, []);

  useEffect(() => {
    void reload();
  }, [reload]);

  // Every pushed capture status feeds the Monitor's history, whichever screen is open.
  useEffect(() => {
    let live = true;
    let unlisten: (() => void) | null = null;
    backend.onCaptureStatus(record).then((stop) => (live ? (unlisten = stop) : stop()));
    return () => {
      live = false;
      unlisten?.();
    };
  }, []);

  const demo = useDemo({
    onStarted: (profile) => {
      void reload();
      // The demo has no publication yet: Setup is where the flow goes on.
      setView({ screen: "profile", id: profile.id, tab: "setup" });
    },
    onStopped: () => {
      void reload();
      setView({ screen: "profile", id: null });
    },
  });

  const selected = view.screen === "profile" && view.id ? (profiles?.find((p) => p.id === view.id) ?? null) : null;
  return (
    <div className="app">
      <ClosePrompt />
      <header className="topbar">
        <img src={logo} alt="" width={28} height={28} />
        <h1>Tidepool</h1>
        <span className="muted tagline">PostgreSQL changes, live and local</span>
        <span className="spacer" />
        <button type="button" className="secondary" data-testid="open-settings" onClick={() => setView({ screen: "settings" })}>
          Settings
        </button>
      </header>
      <div className="layout">
        <div className="sidebar-column" data-testid="sidebar">
          <ProfileList
            profiles={profiles}
            selected={view.screen === "profile" ? view.id : null}
            onSelect={(id) => setView({ screen: "profile", id })}
            onNew={newForm}
          />
          <DemoCard demo={demo} />
        </div>
        <main>
          {/* The tabs stay put while the screen under them scrolls. */}
          {view.screen === "profile" && selected && (
            <nav className="tabs" aria-label="Profile screens" data-testid="tabs">
              {(Object.keys(TAB_TITLES) as Tab[]).map((tab) => (
                <button
                  key={tab}
                  type="button"
                  data-testid={`tab-${tab}`}
                  aria-current={(view.tab ?? "connection") === tab}
                  className={(view.tab ?? "connection") === tab ? "tab current" : "tab"}
                  onClick={() => setView({ screen: "profile", id: selected.id, tab })}
                >
                  {TAB_TITLES[tab]}
                </button>
              ))}
            </nav>
          )}
          <div className="screen" data-testid="screen">
            {loadError && <ErrorNotice error={loadError} testId="load-error" />}
            {removed && <RemovedNotice removed={removed} testId="removed-notice" />}
            {view.screen === "profile" && view.id === null && !view.form && (
              <Welcome
                demo={demo}
                onConnect={newForm}
                onOpenDemo={(id) => setView({ screen: "profile", id, tab: "setup" })}
                saved={profiles?.length ?? 0}
              />
            )}
            {view.screen === "settings" ? (
              <SettingsPanel />
            ) : view.tab === "setup" && selected ? (
              <SetupPanel
                key={selected.id}
                profile={selected}
                profiles={profiles ?? []}
                onProfilesChanged={() => void reload()}
                onGoTo={(tab) => setView({ screen: "profile", id: selected.id, tab })}
              />
            ) : view.tab === "tables" && selected ? (
              <TablesPanel
                key={selected.id}
                profileId={selected.id}
                onStarted={() => setView({ screen: "profile", id: selected.id, tab: "capture" })}
              />
            ) : view.tab === "capture" && selected ? (
              <CapturePanel key={selected.id} profileId={selected.id} />
            ) : view.tab === "collections" && selected ? (
              <CollectionsPanel key={selected.id} profileId={selected.id} />
            ) : view.tab === "consumers" && selected ? (
              <ConsumersPanel key={selected.id} profileId={selected.id} profileName={selected.name} />
            ) : view.tab === "monitor" && selected ? (
              <MonitorPanel key={selected.id} profileId={selected.id} />
            ) : (
              <ProfileEditor
                key={editorKey(view.id, newForms)}
                profile={selected}
                autoFocus={view.screen === "profile" && view.form === true}
                onSaved={(saved) => {
                  void reload();
                  setView({ screen: "profile", id: saved.id });
                }}
                onDeleted={(removed) => {
                  void reload();
                  setRemoved(removed);
                  setView({ screen: "profile", id: null });
                }}
              />
            )}
          </div>
        </main>
      </div>
    </div>
  );
}
