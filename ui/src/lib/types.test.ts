import { describe, expect, it } from "vitest";

import { isBackendError } from "./types";

describe("isBackendError", () => {
  it("accepts the shell's {kind, message} and rejects anything else", () => {
    expect(isBackendError({ kind: "Tls", message: "no TLS" })).toBe(true);
    expect(isBackendError("a plain string")).toBe(false);
    expect(isBackendError({ kind: "Tls" })).toBe(false);
    expect(isBackendError(null)).toBe(false);
  });
});
