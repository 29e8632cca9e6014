// Bundles src/viewer.js with three.js and Spark into ../dist/viewer.js (one minified IIFE that
// viewer.html inlines in a <script>) and writes ../dist/LICENSES.txt: the licence of every npm
// package with code in the bundle, with its name and version. The same texts head viewer.js as a
// comment, so every viewer.html carries them. Run `npm ci && node build.mjs` here.
import { readFileSync, writeFileSync, readdirSync, mkdirSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "..", "dist");

const result = await esbuild.build({
  entryPoints: [join(here, "src", "viewer.js")],
  bundle: true,
  format: "iife",
  minify: true,
  target: ["es2022"],
  legalComments: "none", // the full licence texts go in the banner instead
  metafile: true,
  write: false,
  logLevel: "warning",
});

// The packages whose files esbuild put in the bundle: node_modules/<name> or node_modules/@scope/<name>.
const packages = new Map();
for (const [input, info] of Object.entries(result.metafile.outputs[Object.keys(result.metafile.outputs)[0]].inputs)) {
  if (info.bytesInOutput === 0) continue;
  const match = input.match(/(?:^|\/)node_modules\/((?:@[^/]+\/)?[^/]+)\//);
  if (match === null) continue;
  packages.set(match[1], join(here, input.slice(0, match.index + match[0].length)));
}

const licences = [];
for (const [name, dir] of [...packages].sort()) {
  const manifest = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  const file = readdirSync(dir).find((entry) => /^licen[cs]e(\.(md|txt))?$/i.test(entry));
  if (file === undefined) throw new Error(`${name}@${manifest.version} ships no LICENSE file in ${relative(here, dir)}`);
  const text = readFileSync(join(dir, file), "utf8").trim();
  licences.push(`${name}@${manifest.version} (${manifest.license})\n${"=".repeat(40)}\n\n${text}\n`);
}
const licenceText = licences.join("\n\n");
if (licenceText.includes("*/")) throw new Error("a licence text contains `*/`, which would end the banner comment");

let code = new TextDecoder().decode(result.outputFiles[0].contents);
// viewer.html inlines this file in a <script>: `</script` would end it early and `<!--` would change
// how the HTML parser reads the rest. Inside JS strings, regexes and comments `<\/` and `<\!` read
// the same as `</` and `<!`.
code = code.replace(/<\/(script)/gi, "<\\/$1").replace(/<!--/g, "<\\!--");
const names = [...packages.keys()].sort().join(", ");
const banner = `/*! avatar-forge viewer: src/viewer.js bundled with ${names}.\n\n${licenceText}*/\n`;
const bundle = banner + code;
if (/<\/script|<!--/i.test(bundle)) throw new Error("the bundle still holds `</script` or `<!--`");

mkdirSync(dist, { recursive: true });
writeFileSync(join(dist, "viewer.js"), bundle);
writeFileSync(join(dist, "LICENSES.txt"), `The npm packages bundled in viewer.js and their licences.\n\n${licenceText}`);
console.log(`wrote ${relative(process.cwd(), join(dist, "viewer.js"))} (${bundle.length} bytes) bundling ${names}`);
