// Imported first by main.tsx, before any module that formats numbers or dates at load (uPlot does).
//
// WebKitGTK reports the POSIX locale as `navigator.language` ("C" when LANG is unset or C, as on
// servers and in CI), and Intl rejects that tag with a RangeError, which would stop the whole UI from
// loading. Such a locale means "no preference": fall back to English.
export function usableLanguage(language: string): string {
  try {
    new Intl.NumberFormat(language);
    return language;
  } catch {
    return "en-US";
  }
}

if (typeof navigator !== "undefined" && usableLanguage(navigator.language) !== navigator.language) {
  Object.defineProperty(Navigator.prototype, "language", { get: () => "en-US", configurable: true });
  Object.defineProperty(Navigator.prototype, "languages", { get: () => ["en-US"], configurable: true });
}
