// Parses the AsyncAPI document with the official parser (@asyncapi/parser) and prints every
// diagnostic; exits 1 when there is an error. Usage: node asyncapi.mjs schemas/asyncapi.json
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { Parser, fromFile } from "@asyncapi/parser";

const file = resolve(process.argv[2]);
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, file).parse({ source: pathToFileURL(file).href });
const names = ["error", "warning", "info", "hint"];
const counts = [0, 0, 0, 0];
for (const d of diagnostics) {
  counts[d.severity] += 1;
  console.log(`  ${names[d.severity]} ${d.code} at ${d.path.join(".") || "(root)"}: ${d.message}`);
}
const operations = document ? document.operations().length : 0;
const messages = document ? document.allMessages().length : 0;
console.log(`asyncapi-parser: ${counts[0]} errors, ${counts[1]} warnings; ${document ? "parsed" : "NOT parsed"}, ${operations} operations, ${messages} messages`);
process.exit(counts[0] === 0 && document ? 0 : 1);
