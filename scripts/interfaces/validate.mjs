// Validates JSON documents against the event schemas with Ajv (JSON Schema 2020-12, formats
// checked). Usage: node validate.mjs <schema dir> <document dir>: each document is checked
// against the schema of the same file name. Prints each violation and a count; exits 1 on any.
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";

const [schemaDir, documentDir] = process.argv.slice(2);
const ajv = new Ajv2020({ allErrors: true, strict: false });
addFormats(ajv);
let documents = 0;
let violations = 0;
for (const file of readdirSync(documentDir).filter((f) => f.endsWith(".json")).sort()) {
  const schema = JSON.parse(readFileSync(join(schemaDir, file), "utf8"));
  const document = JSON.parse(readFileSync(join(documentDir, file), "utf8"));
  const validate = ajv.compile(schema);
  documents += 1;
  if (!validate(document)) {
    for (const e of validate.errors) {
      violations += 1;
      console.log(`  ${file}: ${e.instancePath || "/"} ${e.message}`);
    }
  }
}
console.log(`jackson-round-trip: ${violations} violations in ${documents} documents`);
process.exit(violations === 0 && documents > 0 ? 0 : 1);
