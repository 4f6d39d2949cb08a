// The only module that talks to the desktop shell. Everything else imports from here, so the UI can be
// tested with this module mocked, and the shell's command names live in one place.
import { invoke } from "@tauri-apps/api/core";

import { isBackendError, type BackendError, type ConnectionForm, type ServerFacts } from "../types";

async function call<T>(command: string, args: Record<string, unknown>): Promise<T> {
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

/** Connects with the form's values and reads the server's facts. */
export function testConnection(form: ConnectionForm): Promise<ServerFacts> {
  return call<ServerFacts>("test_connection", { form });
}
