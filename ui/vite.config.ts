import { defineConfig } from "vitest/config";
import react from "@vitejs/plugin-react";

// The desktop shell loads the built files (tauri.conf.json `frontendDist`) or this dev server.
export default defineConfig({
  plugins: [react()],
  clearScreen: false,
  // The app icon is imported from ../icons, the one source image of every icon.
  server: { port: 1420, strictPort: true, fs: { allow: [".."] } },
  build: { target: "es2022", outDir: "dist", emptyOutDir: true },
  test: {
    environment: "jsdom",
    globals: true,
    include: ["src/**/*.test.{ts,tsx}"],
    setupFiles: ["src/test/setup.ts"],
    // Form tests type whole names and URLs key by key; on a 2-core machine shared with a Rust build
    // they pass 5 s. Time is not what they assert.
    testTimeout: 20_000,
  },
});
