// atelier.CompactAdvanced: Train LoRA Advanced shows its everyday settings and folds the rest into five sections
// (dataset, network, optimiser + schedule, objective, saving + sampling), each opened by its own toggle, so the
// node fits a 1080p screen. Folded widgets are only hidden (widget.hidden, no height): they keep their values and
// are still sent in the prompt under their own names, and saved workflows keep the schema's widget order.
// One feature, one file; it uses the frontend's own app module and chains the node's callbacks.

import { app } from "../../scripts/app.js";

const NODE = "AtelierTrainLoRAAdvanced";
const TOGGLE_PREFIX = "atelier_section_"; // toggle widgets' names; never serialized into the workflow or the prompt

// Section → the schema widgets it folds; a widget in no section (and any widget added later) stays visible.
const SECTIONS = [
  ["dataset", "dataset: captions, masks, latent cache",
    ["caption_shuffle", "keep_tokens", "caption_dropout", "tag_dropout", "masked_loss", "cache_latents"]],
  ["network", "network: LoCon, dropout, target layers",
    ["conv_rank", "conv_alpha", "dropout", "rank_dropout", "module_dropout", "target_patterns", "exclude_patterns",
      "train_t5",
      "rank_overrides"]],
  ["optimiser", "optimiser + schedule: decay, warmup, EMA, precision",
    ["grad_accum", "weight_decay", "warmup_steps", "num_cycles", "power", "max_grad_norm", "precision", "ema_decay",
      "gradient_checkpointing"]],
  ["objective", "objective: loss, min-SNR, noise offset, timesteps",
    ["loss", "huber_delta", "min_snr_gamma", "noise_offset", "min_timestep_percent", "max_timestep_percent"]],
  ["saving", "saving + sampling: saves, resume, previews",
    ["save_every_steps", "save_every_epochs", "keep_last", "resume_state", "continue_from", "sample_every_steps",
      "sample_every_epochs", "sample_prompts", "sample_negative", "sample_seed", "sample_steps", "sample_cfg",
      "sample_sampler", "sample_scheduler", "sample_width", "sample_height"]],
];

function fit(node) {
  const [, height] = node.computeSize();
  node.setSize([node.size[0], height]); // shrink or grow to the visible widgets, keeping the user's width
  node.setDirtyCanvas?.(true, true);
}

function setOpen(node, key, open) {
  const section = SECTIONS.find(([k]) => k === key);
  for (const w of node.widgets) {
    if (!section[2].includes(w.name)) continue;
    w.hidden = !open; // not drawn, not clickable, its text box (if any) hidden
    // frontend 1.27 lays out hidden widgets too: a folded one takes no height (-4 cancels the 4 px gap)
    if (!("atelierComputeSize" in w)) w.atelierComputeSize = Object.hasOwn(w, "computeSize") ? w.computeSize : null;
    if (!open) w.computeSize = () => [0, -4];
    else if (w.atelierComputeSize) w.computeSize = w.atelierComputeSize;
    else delete w.computeSize;
  }
  const toggle = node.widgets.find((w) => w.name === TOGGLE_PREFIX + key);
  if (toggle) toggle.value = open;
  node.properties.atelier_open_sections = SECTIONS.map(([k]) => k)
    .filter((k) => node.widgets.find((w) => w.name === TOGGLE_PREFIX + k)?.value);
}

function compact(node) {
  // the schema's order of serialized widgets: saved workflows store widgets_values in this order
  node.atelierSchemaOrder = node.widgets.filter((w) => w.serialize !== false).map((w) => w.name);
  const folded = new Set(SECTIONS.flatMap(([, , names]) => names));
  const order = node.widgets.filter((w) => !folded.has(w.name));
  for (const [key, label, names] of SECTIONS) {
    const members = names.map((n) => node.widgets.find((w) => w.name === n)).filter(Boolean);
    if (members.length === 0) continue;
    const toggle = node.addWidget("toggle", TOGGLE_PREFIX + key, false, (value) => {
      setOpen(node, key, Boolean(value));
      fit(node);
    }, { on: "open", off: "folded", serialize: false });
    toggle.serialize = false; // a display control, not a setting: neither widgets_values nor the prompt carry it
    toggle.label = label;
    node.widgets.splice(node.widgets.indexOf(toggle), 1);
    order.push(toggle, ...members);
  }
  node.widgets.splice(0, node.widgets.length, ...order);
  node.properties ??= {};
  for (const [key] of SECTIONS) setOpen(node, key, false);
  fit(node);
}

app.registerExtension({
  name: "atelier.CompactAdvanced",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      compact(this);
      return result;
    };

    // widgets_values in the schema's order, toggles left out, exactly as without this extension
    const onSerialize = nodeType.prototype.onSerialize;
    nodeType.prototype.onSerialize = function (data) {
      onSerialize?.apply(this, arguments);
      if (!this.atelierSchemaOrder || !data.widgets_values) return;
      data.widgets_values = this.atelierSchemaOrder.map((name) => this.widgets.find((w) => w.name === name)?.value);
    };

    // LiteGraph assigned widgets_values by display position; assign them again by the schema's order
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (info) {
      const result = onConfigure?.apply(this, arguments);
      if (this.atelierSchemaOrder && Array.isArray(info?.widgets_values)) {
        this.atelierSchemaOrder.forEach((name, i) => {
          const w = this.widgets.find((w) => w.name === name);
          if (w && i < info.widgets_values.length && info.widgets_values[i] !== undefined) {
            w.value = info.widgets_values[i];
          }
        });
      }
      const open = new Set(this.properties?.atelier_open_sections ?? []);
      for (const [key] of SECTIONS) setOpen(this, key, open.has(key));
      fit(this);
      return result;
    };
  },
});
