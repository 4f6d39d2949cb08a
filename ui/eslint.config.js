// Lint gate run by script/test: React's rules of hooks (hooks called unconditionally, effect and
// callback dependencies complete). TypeScript's own checks are `tsc --noEmit`; this adds only what
// the compiler cannot see.
import tsParser from "@typescript-eslint/parser";
import reactHooks from "eslint-plugin-react-hooks";

export default [
  // The production build's output (vite build), not source.
  { ignores: ["dist/"] },
  {
    files: ["src/**/*.{ts,tsx}"],
    languageOptions: {
      parser: tsParser,
      parserOptions: { ecmaFeatures: { jsx: true } },
    },
    plugins: { "react-hooks": reactHooks },
    rules: {
      "react-hooks/rules-of-hooks": "error",
      "react-hooks/exhaustive-deps": "error",
    },
  },
];
