// Parses an AsyncAPI document with the official parser (@asyncapi/parser), resolving its
// relative $refs from the file's folder; prints each diagnostic as one JSON line.
// Then the payload fields of each message as the parser resolved them (the $refs followed).
// Usage: node asyncapi_validate.mjs <node_modules holding the parser> <document>
import { createRequire } from "node:module";

const [modules, file] = process.argv.slice(2);
const { Parser, fromFile } = createRequire(`${modules}/`)("@asyncapi/parser");
const { document, diagnostics } = await fromFile(new Parser(), file).parse();
for (const d of diagnostics) {
  // severity: 0 error, 1 warning, 2 information, 3 hint (Spectral's)
  console.log(JSON.stringify({ severity: d.severity, code: d.code, path: d.path.join("/"), message: d.message }));
}
const messages = {};
for (const message of document?.allMessages() ?? []) {
  messages[message.id()] = Object.keys(message.payload()?.json().properties ?? {});
}
console.log(JSON.stringify({ parsed: document !== undefined, messages }));
