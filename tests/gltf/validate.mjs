// Validate one .glb with the Khronos glTF validator; print its JSON report on stdout.
// Usage: node validate.mjs FILE.glb
import { readFile } from "node:fs/promises";
import validator from "gltf-validator";

const path = process.argv[2];
if (!path) {
  console.error("usage: node validate.mjs FILE.glb");
  process.exit(2);
}
const bytes = new Uint8Array(await readFile(path));
const report = await validator.validateBytes(bytes, { maxIssues: 200, writeTimestamp: false });
process.stdout.write(JSON.stringify(report));
