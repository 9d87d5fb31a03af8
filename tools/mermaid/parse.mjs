// Parse each Mermaid block of a Markdown file with Mermaid itself (in jsdom): exit 1 naming the first that fails.
import { readFileSync } from "node:fs";
import { JSDOM } from "jsdom";

const dom = new JSDOM("<!doctype html><html><body></body></html>");
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const { default: mermaid } = await import("mermaid");
mermaid.initialize({ startOnLoad: false });

const text = readFileSync(process.argv[2], "utf8");
const blocks = [...text.matchAll(/```mermaid\n([\s\S]*?)```/g)].map((m) => m[1]);
for (const [i, block] of blocks.entries()) {
  try {
    const result = await mermaid.parse(block);
    console.log(`block ${i + 1}: ${result.diagramType}`);
  } catch (err) {
    console.error(`block ${i + 1}: ${err.message}`);
    process.exit(1);
  }
}
console.log(`${blocks.length} Mermaid blocks parse`);
