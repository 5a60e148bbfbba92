// atelier.ReportPanel: the text an Atelier node returns (dry-run diffs, statistics, inspections, training reports)
// is shown on the node itself, in a read-only text panel, so an artist reads it without adding a Show Text node.
// One feature, one file; it uses the frontend's own app and widget modules and chains the node's callbacks.

import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const PANEL = "atelier_report"; // the panel widget's name; never serialized into the workflow or the prompt
const MAX_CHARS = 20000; // a report longer than this is cut (the full text stays in the node's output)

function reportText(message) {
  const parts = message?.text;
  if (!Array.isArray(parts) || parts.length === 0) return null;
  const text = parts.map(String).join("\n\n");
  return text.length > MAX_CHARS ? text.slice(0, MAX_CHARS) + `\n… (${text.length - MAX_CHARS} more characters)` : text;
}

function showReport(node, text) {
  let panel = node.widgets?.find((w) => w.name === PANEL);
  if (!panel) {
    panel = ComfyWidgets.STRING(node, PANEL, ["STRING", { multiline: true }], app).widget;
    // the report is output, not a setting: neither the workflow (widget.serialize) nor the prompt
    // (options.serialize, which graphToPrompt reads) carries it, so it never changes ComfyUI's cache key
    panel.serialize = false;
    panel.options = { ...(panel.options || {}), serialize: false };
    if (panel.inputEl) {
      panel.inputEl.readOnly = true;
      panel.inputEl.style.opacity = 0.85;
      panel.inputEl.dataset.atelierReport = "1";
    }
    node.setSize?.([Math.max(node.size[0], 420), node.size[1] + 120]); // room to read it without scrolling
  }
  panel.value = text;
  if (panel.inputEl) panel.inputEl.value = text;
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "atelier.ReportPanel",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("Atelier")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      const text = reportText(message);
      if (text !== null) showReport(this, text);
      return result;
    };
  },
});
