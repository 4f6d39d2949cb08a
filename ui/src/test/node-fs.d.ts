// The one Node API a test uses (styles.test.ts reads the stylesheet as a file); the UI itself never
// runs in Node, so Node's full typings are not a dependency.
declare module "node:fs" {
  export function readFileSync(path: URL, encoding: "utf8"): string;
}
