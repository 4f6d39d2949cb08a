// The only module that talks to the desktop shell. Everything else imports from here, so the UI can be
// tested with this module replaced, and the shell's command names live in one place.
import { Channel, invoke } from "@tauri-apps/api/core";
import { listen } from "@tauri-apps/api/event";

import {
  isBackendError,
  type Autofill,
  type BackendError,
  type Binding,
  type Choice,
  type PublicationPlan,
  type PublishPlan,
  type TableRef,
  type CaptureDefinition,
  type DiscoveredTable,
  type CollectionInfo,
  type CollectionView,
  type Page,
  type PageRequest,
  type ExportFormat,
  type Exported,
  type Engine,
  type ExportFile,
  type RunStatus,
  type TailEntry,
  type Fix,
  type NeonBranch,
  type NeonLink,
  type NeonProject,
  type PreflightCheck,
  type SetupAction,
  type RunAs,
  type HostKey,
  type KeychainStatus,
  type NeonKeyStatus,
  type ProfileDraft,
  type ProfileView,
  type Removed,
  type SaveCheck,
  type ServerFacts,
  type SlotHealth,
  type Consumer,
  type ConsumerActivity,
  type ConsumerAction,
  type TestMessageResult,
  type TrialRequest,
  type TrialWebhook,
  type ConsumerSpec,
  type ConsumerView,
  type PullAccess,
  type FilterCheck,
  type SecretHeaderValue,
} from "../types";

async function call<T>(command: string, args: Record<string, unknown> = {}): Promise<T> {
  try {
    return await invoke<T>(command, args);
  } catch (error) {
    throw toBackendError(error);
  }
}

function toBackendError(error: unknown): BackendError {
  if (isBackendError(error)) return error;
  return { kind: "Internal", message: String(error) };
}

/** Empty strings mean "not given" to the engine. */
const orNull = (password: string): string | null => (password === "" ? null : password);

export const listProfiles = () => call<ProfileView[]>("list_profiles");

/**
 * Saves the form. With "testFirst" (the form's Save) the engine logs in with it first and stores
 * nothing if that fails, rejecting with the test's error.
 */
export const saveProfile = (id: string | null, draft: ProfileDraft, password: string, check: SaveCheck = "testFirst") =>
  call<ProfileView>("save_profile", { id, draft, password: orNull(password), check });

/** The SSH bastion's host key, read without logging in, to compare and accept. */
export const sshHostKey = (address: string) => call<HostKey>("ssh_host_key", { address });

export const deleteProfile = (id: string) => call<Removed>("delete_profile", { id });
export const discardStore = (id: string) => call<Removed>("discard_store", { id });

export const autofill = (text: string) => call<Autofill>("autofill", { text });

/** Tests the form as it stands; an empty password means "use the keychain's" for a saved profile. */
export const testConnection = (id: string | null, draft: ProfileDraft, password: string) =>
  call<ServerFacts>("test_connection", { id, draft, password: orNull(password) });

export const keychainStatus = () => call<KeychainStatus>("keychain_status");

export const neonKeyStatus = () => call<NeonKeyStatus>("neon_key_status");

export const setNeonKey = (key: string) => call<NeonKeyStatus>("set_neon_key", { key });

export const removeNeonKey = () => call<NeonKeyStatus>("remove_neon_key");

export const discoverTables = (id: string) => call<DiscoveredTable[]>("discover_tables", { id });

export const captureDefinition = (id: string) => call<CaptureDefinition | null>("capture_definition", { id });

/**
 * "Save and publish": returns the SQL statements that ran to make the publication contain the tables.
 * A bound table without a usable replica identity needs a choice (REPLICA IDENTITY FULL or inserts only).
 */
export const publishCapture = (id: string, bindings: Binding[], choices: Choice[] = []) =>
  call<string[]>("publish_capture", { id, bindings, choices });

/** What publishing `tables` in the profile's publication would run, and the tables that need a choice. */
export const planPublication = (id: string, tables: TableRef[], choices: Choice[]) =>
  call<PublicationPlan>("plan_publication", { id, tables, choices });

/** What one-click "Save and publish" will do, in order; runs nothing. */
export const planSaveAndPublish = (id: string, bindings: Binding[], choices: Choice[] = []) =>
  call<PublishPlan>("plan_save_and_publish", { id, bindings, choices });

/**
 * One-click "Save and publish": the publication, the definition, then the capture started (slot,
 * backfill, stream), or the running capture told of the new definition. Its status then arrives as
 * `capture-status` events.
 */
export const saveAndPublish = (id: string, bindings: Binding[], choices: Choice[] = []) =>
  call<RunStatus>("save_and_publish", { id, bindings, choices });

export const preflight = (id: string) => call<PreflightCheck[]>("preflight", { id });

/**
 * Runs a fix the user saw (its SQL) and confirmed, as the profile's role, or as `runAs` (an owner
 * profile, or an owner password that goes only to this call).
 */
export const runFix = (id: string, action: SetupAction, runAs?: RunAs) =>
  call<void>("run_fix", runAs && runAs.kind !== "profile" ? { id, action, runAs } : { id, action });

/** What an action would run, with its warning, for the confirmation step. */
export const previewAction = (action: SetupAction) => call<Fix>("preview_action", { action });

export const neonProjects = () => call<NeonProject[]>("neon_projects");

export const neonBranches = (projectId: string) => call<NeonBranch[]>("neon_branches", { projectId });

/** The Neon project and branch whose endpoint serves the profile's host, if the key can see it. */
export const neonLocate = (id: string) => call<NeonLink | null>("neon_locate", { id });

export const linkNeon = (id: string, link: NeonLink | null) => call<ProfileView>("link_neon", { id, link });

export const startCapture = (id: string) => call<RunStatus>("start_capture", { id });

/** Stops the capture; the slot stays, so the server keeps WAL until the next start. */
export const stopCapture = (id: string) => call<RunStatus>("stop_capture", { id });

export const captureStatus = (id: string) => call<RunStatus>("capture_status", { id });

/** Every status change of every capture, pushed by the engine. Returns the unsubscribe function. */
export async function onCaptureStatus(listener: (status: RunStatus) => void): Promise<() => void> {
  return listen<RunStatus>("capture-status", (event) => listener(event.payload));
}

export const collections = (id: string) => call<CollectionInfo[]>("collections", { id });

export const collectionPage = (id: string, collection: string, request: PageRequest) =>
  call<Page>("collection_page", { id, collection, request });

/** Writes the whole view (filtered) to the Downloads folder as JSON Lines or CSV. */
export const exportCollection = (
  id: string,
  collection: string,
  view: CollectionView,
  filter: string | null,
  format: ExportFormat,
) => call<Exported>("export_collection", { id, collection, view, filter, format });

/** Opens the folder exports go to (Downloads) in the system's file manager. */
export const openExportFolder = () => call<void>("open_export_folder");

/** The capture as Estuary Flow's `flow.yaml` or Sequin's `sequin.yaml` (secrets as placeholders). */
export const exportCapture = (id: string, engine: Engine) => call<ExportFile>("export_capture", { id, engine });

/**
 * Streams the collection's changes after `after` as the capture stores them (pushed through a channel),
 * only those the CEL `filter` matches (evaluated in the engine).
 * Returns a function that ends the tail.
 */
export function tailCollection(
  id: string,
  collection: string,
  after: number,
  filter: string | null,
  onChange: (entries: TailEntry[]) => void,
  onError: (error: BackendError) => void,
): () => void {
  const token = `${Date.now()}-${Math.random().toString(36).slice(2)}`;
  const channel = new Channel<TailEntry[]>();
  channel.onmessage = onChange;
  // A tail that ends on an error leaves the view still: say so rather than look live.
  call<void>("tail_collection", { id, collection, after, filter, token, onChange: channel }).catch((e: unknown) =>
    onError(e as BackendError),
  );
  return () => {
    void call<void>("stop_tail", { token });
  };
}

/** "Try it with a demo database": a throwaway local server with a sample schema; returns its profile. */
export const startDemo = () => call<ProfileView>("start_demo");

/** Removes the demo database, its profile and its capture. */
export const stopDemo = () => call<Removed | null>("stop_demo");

/** The demo's profile id while one runs. */
export const demoProfile = () => call<string | null>("demo_profile");

/** "Stop and drop the slot": stops the capture, drops its slot, empties the local collections. */
export const stopAndDropSlot = (id: string) => call<RunStatus>("stop_and_drop_slot", { id });

/** "Re-backfill and continue" after the capture was refused for a gap: records the gap, re-reads the backfilled tables, starts the capture. */
export const resyncCapture = (id: string) => call<RunStatus>("resync_capture", { id });

/** The health of the profile's slot, with warnings. */
export const slotHealth = (id: string) => call<SlotHealth>("slot_health", { id });

/** Called when the window is closed while a capture runs (the window stays open until answered). */
export async function onCloseRequested(listener: () => void): Promise<() => void> {
  return listen<null>("close-requested", () => listener());
}

/** Closing while capturing, answered: stop every capture (slots stay) and quit. */
export const stopCapturesAndQuit = () => call<void>("stop_captures_and_quit");

/** Closing while capturing, answered: keep capturing with the window minimized. */
export const keepCapturingInBackground = () => call<void>("keep_capturing_in_background");

/** Checks a collection name by the engine's rules; rejects with the reason. */
export const checkCollectionName = (name: string) => call<void>("check_collection_name", { name });

/** The profile's consumers with their counts, notices and parked messages. */
export const listConsumers = (id: string) => call<ConsumerView[]>("list_consumers", { id });

/** "Create consumer": secret header values go to the keychain and are never shown again. */
export const addConsumer = (id: string, spec: ConsumerSpec, secretHeaders: SecretHeaderValue[], credential?: string) =>
  call<Consumer>("add_consumer", { id, spec, secretHeaders, credential: credential ?? null });

/** Deletes a consumer, its queue and its keychain entries. */
export const removeConsumer = (id: string, name: string) => call<Consumer>("remove_consumer", { id, name });

/** A webhook consumer's signing secret (`whsec_…`), read from the keychain on this request only. */
export const revealSigningSecret = (id: string, name: string) =>
  call<string>("reveal_signing_secret", { id, name });

/** The connection's pull API token (read from the keychain on this request only), URL and state. */
export const revealPullToken = (id: string) => call<PullAccess>("reveal_pull_token", { id });

/** Puts parked messages (all, or the one at `seq`) back in the queue; resolves to how many. */
export const retryConsumer = (id: string, name: string, seq: number | null = null) =>
  call<number>("retry_consumer", { id, name, seq });

/** Drops parked messages (all, or the one at `seq`) undelivered; resolves to how many. */
export const skipConsumer = (id: string, name: string, seq: number | null = null) =>
  call<number>("skip_consumer", { id, name, seq });

/** Checks a filter as saving would, and tries it on the collections' newest changes. */
export const checkConsumerFilter = (id: string, filter: string, collections: string[], actions: ConsumerAction[]) =>
  call<FilterCheck>("check_consumer_filter", { id, filter, collections, actions });

/** Pauses (`true`) or resumes a consumer: while paused nothing is delivered and its messages stay queued. */
export const setConsumerPaused = (id: string, name: string, paused: boolean) =>
  call<Consumer>("set_consumer_paused", { id, name, paused });

/** A consumer's recent requests (status, duration, error) and per-second delivered counts and latency. */
export const consumerActivity = (id: string, name: string) =>
  call<ConsumerActivity>("consumer_activity", { id, name });

/** "Send a test message": one signed request to a webhook consumer's URL, its body marked as a test. */
export const testConsumer = (id: string, name: string) => call<TestMessageResult>("test_consumer", { id, name });

/** Saves a consumer's new definition; secret header values given go to the keychain, the others stay there. */
export const editConsumer = (id: string, name: string, spec: ConsumerSpec, secretHeaders: SecretHeaderValue[] = []) =>
  call<Consumer>("edit_consumer", { id, name, spec, secretHeaders });

/** "Try a webhook": the app's own receiver, and a consumer `try-webhook` of every collection delivering to it. */
export const tryWebhook = (id: string) => call<TrialWebhook>("try_webhook", { id });

/** What the "Try a webhook" receiver got, newest first. */
export const trialWebhookRequests = () => call<TrialRequest[]>("trial_webhook_requests");
