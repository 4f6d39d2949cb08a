import { describe, expect, it } from "vitest";

import { usableLanguage } from "./locale";

describe("usableLanguage", () => {
  it('keeps a real language tag and replaces the POSIX "C" locale that Intl rejects', () => {
    expect(usableLanguage("de-DE")).toBe("de-DE");
    expect(usableLanguage("C")).toBe("en-US");
  });
});
