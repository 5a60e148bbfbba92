"""The example workflows as plain data: nodes (type, title, widgets by name, links by input name) and the Note text.

make_examples.py builds each one in the real editor and saves what the editor serialises into example_workflows/;
the saved JSON, not this file, is what users open and what the tests run. Values are the seed guides' own values
(see example_workflows/README.md for which guide each comes from).
"""

BASE = "v1-5-pruned-emaonly.safetensors"  # the guides trained on SD 1.4 / 1.5; any SD1.x checkpoint works


def node(key, type_, title, pos, widgets=None, links=None):
    """One node at grid cell `pos` (column, row); `links` maps an input name to (source key, output index)."""
    return dict(key=key, type=type_, title=title, pos=pos, widgets=widgets or {}, links=links or {})


def loader(pos=(0, 0), key="ckpt", title="Load Checkpoint", ckpt=BASE):
    return node(key, "CheckpointLoaderSimple", title, pos, {"ckpt_name": ckpt})


STARSECTOR_NOTE = """Game portrait style (Starsector portraits model card).

Download: an SD 1.5 checkpoint (v1-5-pruned-emaonly.safetensors) into models/checkpoints.
Put your portraits (black or white backgrounds, one caption .txt beside each image) in input/starsector_portraits,
and your regularisation images (photos, paintings, digital art of people; the card used 8,000) in
input/portrait_regularization.

What runs: the trigger token starsectorportrait is added to every caption, every portrait gets a mirrored copy,
the regularisation set adds prior preservation (weight 1.0), a full fine-tune trains the UNet, then a hypernetwork
refines the fine-tuned model on the same set (13,431 steps, as the card's HN_ssportrait file).
Each model gets a CFG x steps grid with the card's prompt and sampler (euler_a).

You get: models/checkpoints/atelier/starsector_portraits.safetensors,
models/hypernetworks/atelier/HN_ssportrait.pt, and output/atelier/grids/starsector_cfg_steps_*.png and
starsector_hn_cfg_steps_*.png.
Change for real use: the folders' sub_path, output names, epochs (the card does not state its learning rate or
epochs: 2e-6 and 10 are Atelier's defaults)."""

STARSECTOR = dict(note=STARSECTOR_NOTE, nodes=[
    loader((0, 0)),
    node("portraits", "AtelierLoadDataset", "Portraits", (0, 1), dict(
        folder="input", sub_path="starsector_portraits", role="train", repeats=1, caption_source="sidecar",
        subset_name="portraits", verify_images=True)),
    node("trigger", "AtelierSetTriggerWords", "Trigger Token", (1, 1), dict(
        trigger_words="starsectorportrait", subsets="portraits"), {"dataset": ("portraits", 0)}),
    node("mirror", "AtelierMirrorDataset", "Mirrored Copies", (2, 1), dict(mode="copies", subsets="portraits"),
         {"dataset": ("trigger", 0)}),
    node("reg", "AtelierLoadDataset", "Regularisation Set", (3, 1), dict(
        folder="input", sub_path="portrait_regularization", role="regularization", repeats=1,
        caption_source="fixed", fixed_caption="a portrait of a person", prior_loss_weight=1.0,
        subset_name="regularization", verify_images=True), {"dataset": ("mirror", 0)}),
    node("prepare", "AtelierPrepareDataset", "Prepare 512", (4, 1), dict(mode="crop", width=512, height=512),
         {"dataset": ("reg", 0)}),
    node("finetune", "AtelierTrainFullFineTune", "Full Fine-Tune", (5, 0), dict(
        output_name="starsector_portraits", unet_lr=2e-6, epochs=10, batch_size=1, gradient_checkpointing=True,
        seed=0), {"model": ("ckpt", 0), "clip": ("ckpt", 1), "vae": ("ckpt", 2), "dataset": ("prepare", 0)}),
    node("hn", "AtelierTrainHypernetwork", "Hypernetwork", (6, 1), dict(
        output_name="HN_ssportrait", layer_structure="1, 2, 1", activation="linear", lr=1e-5, epochs=1000,
        max_steps=13431, seed=0), {"model": ("finetune", 0), "clip": ("finetune", 1), "vae": ("ckpt", 2),
                                   "dataset": ("prepare", 0)}),
    node("grid", "AtelierXYGrid", "CFG x Steps (fine-tune)", (6, 0), dict(
        positive="a starsectorportrait of a person", negative="", x_kind="cfg", x_values="3,5,7,9,11",
        y_kind="steps", y_values="10,20,30,40,50", baseline="none", sampler="euler_ancestral", scheduler="normal",
        seed=0,
        width=512, height=512, grid_name="starsector_cfg_steps"),
         {"model": ("finetune", 0), "clip": ("finetune", 1), "vae": ("ckpt", 2)}),
    node("hn_grid", "AtelierXYGrid", "CFG x Steps (hypernetwork)", (7, 1), dict(
        positive="a starsectorportrait of a person", negative="", x_kind="cfg", x_values="3,5,7,9,11",
        y_kind="steps", y_values="10,20,30,40,50", baseline="none", sampler="euler_ancestral", scheduler="normal",
        seed=0,
        width=512, height=512, grid_name="starsector_hn_cfg_steps"),
         {"model": ("hn", 0), "clip": ("finetune", 1), "vae": ("ckpt", 2)}),
])

KORRA_NOTE = """Style + character from screencaps (4elements / Legend of Korra model card).

Download: an SD 1.5 checkpoint (v1-5-pruned-emaonly.safetensors) into models/checkpoints.
Put screencaps whose file names are their captions in input/korra_screencaps, and fan art / cosplay photos with
hand-written .txt captions in input/korra_fanart.

What runs: near-duplicate screencaps are dropped (report: output/atelier/reports/korra_dedupe_*.json),
screencaps are cropped to 512x512 and fan art letterboxed to 512x512 with black borders, then a full fine-tune
(UNet only, no class or regularisation images, as the card) in two phases: 80 passes at learning rate 3e-6,
then 35 more passes at 2e-6 continuing from the first phase's weights. A sampler x CFG grid compares Euler a,
LMS and DPM++ 2M at CFG 7 and 4 with the card's negative prompt.

You get: models/checkpoints/atelier/4elements_phase1.safetensors and 4elements.safetensors, and
output/atelier/grids/4elements_sampler_cfg_*.png.
Change for real use: the folders' sub_path and the prompt."""

KORRA = dict(note=KORRA_NOTE, nodes=[
    loader((0, 0)),
    node("caps", "AtelierLoadDataset", "Screencaps (captions from file names)", (0, 1), dict(
        folder="input", sub_path="korra_screencaps", role="train", repeats=1, caption_source="filename",
        subset_name="screencaps", verify_images=True)),
    node("dedupe", "AtelierDedupeDataset", "Dedupe", (1, 1), dict(
        threshold=6, keep="sharpest", flip_aware=True, border_aware=True, report_name="korra_dedupe"),
         {"dataset": ("caps", 0)}),
    node("crop", "AtelierPrepareDataset", "Crop 512", (2, 1), dict(
        mode="crop", width=512, height=512, subsets="screencaps"), {"dataset": ("dedupe", 0)}),
    node("fanart", "AtelierLoadDataset", "Fan Art (hand captions)", (3, 1), dict(
        folder="input", sub_path="korra_fanart", role="train", repeats=1, caption_source="sidecar",
        subset_name="fanart", verify_images=True), {"dataset": ("crop", 0)}),
    node("letterbox", "AtelierPrepareDataset", "Letterbox 512", (4, 1), dict(
        mode="letterbox", width=512, height=512, pad_color="black", subsets="fanart"), {"dataset": ("fanart", 0)}),
    node("phase1", "AtelierTrainFullFineTune", "Phase 1 (3e-6)", (5, 0), dict(
        output_name="4elements_phase1", unet_lr=3e-6, train_text_encoder=False, epochs=80, batch_size=1,
        gradient_checkpointing=True, seed=0),
         {"model": ("ckpt", 0), "clip": ("ckpt", 1), "vae": ("ckpt", 2), "dataset": ("letterbox", 0)}),
    node("phase2", "AtelierTrainFullFineTune", "Phase 2 (2e-6)", (6, 0), dict(
        output_name="4elements", unet_lr=2e-6, train_text_encoder=False, epochs=35, batch_size=1,
        gradient_checkpointing=True, seed=0),
         {"model": ("phase1", 0), "clip": ("phase1", 1), "vae": ("ckpt", 2), "dataset": ("letterbox", 0)}),
    node("grid", "AtelierXYGrid", "Sampler x CFG", (7, 0), dict(
        positive="half-body korra standing city street background day tlok artstyle",
        negative="blur, vignette, instagram", x_kind="sampler", x_values="euler_ancestral,lms,dpmpp_2m",
        y_kind="cfg", y_values="7,4", baseline="none", steps=20, sampler="euler_ancestral", scheduler="normal", seed=0,
        width=512, height=512, grid_name="4elements_sampler_cfg"),
         {"model": ("phase2", 0), "clip": ("phase2", 1), "vae": ("ckpt", 2)}),
])

RUN_GRID_NOTE = """XY grid of a finished run: every saved epoch of a LoRA x strength, with a row without the LoRA.

Download: the checkpoint the LoRA was trained on, into models/checkpoints.
The LoRA files: models/loras/atelier/my_lora*.safetensors (what Train LoRA saves with save_every_epochs).
Change for real use: y_values (a name pattern of your run's files), the prompt (with your trigger word).
You get: output/atelier/grids/my_lora_epochs_*.png (every cell's settings are in the PNG's metadata)."""

RUN_GRID = dict(note=RUN_GRID_NOTE, nodes=[
    loader((0, 0)),
    node("grid", "AtelierXYGrid", "Epochs x Strength", (1, 0), dict(
        positive="my_trigger, portrait", negative="", x_kind="strength", x_values="0.5,0.75,1", y_kind="lora",
        y_values="atelier/my_lora*", baseline="row", steps=20, cfg=7.0, sampler="euler", scheduler="normal", seed=0,
        width=512, height=512, grid_name="my_lora_epochs"),
         {"model": ("ckpt", 0), "clip": ("ckpt", 1), "vae": ("ckpt", 2)}),
])

LORA_TOOLS_NOTE = """Merge, resize and extract LoRAs.

Merge: two LoRAs at strength 1.0 each (concat keeps both exactly) into models/loras/atelier/merged.safetensors.
Resize: a LoRA down to rank 32, into models/loras/atelier/resized.safetensors.
Extract: the difference between a fine-tuned checkpoint and its base as a rank-64 LoRA, into
models/loras/atelier/extracted.safetensors.
Download: the base checkpoint and the fine-tuned one into models/checkpoints, the LoRAs into models/loras.
Change for real use: the file names in the lora and ckpt_name widgets, ranks and output names."""

LORA_TOOLS = dict(note=LORA_TOOLS_NOTE, nodes=[
    node("merge", "AtelierMergeLoRAs", "Merge", (0, 0), dict(
        lora_1="style.safetensors", strength_1=1.0, lora_2="character.safetensors", strength_2=1.0, mode="concat",
        rank=64, output_name="merged")),
    node("resize", "AtelierResizeLoRA", "Resize", (1, 0), dict(
        lora="character.safetensors", rank=32, dynamic_method="none", output_name="resized")),
    loader((0, 1), key="base", title="Base Checkpoint"),
    loader((0, 2), key="tuned", title="Fine-Tuned Checkpoint", ckpt="atelier/my_finetune.safetensors"),
    node("extract", "AtelierExtractLoRA", "Extract", (1, 1), dict(rank=64, output_name="extracted"),
         {"tuned_model": ("tuned", 0), "base_model": ("base", 0), "tuned_clip": ("tuned", 1),
          "base_clip": ("base", 1)}),
])

CAPTION_NOTE = """Caption a folder with a WD14 tagger.

Download: a WD14 model (for example SmilingWolf/wd-swinv2-tagger-v3: model.onnx + selected_tags.csv) into
models/wd14_tagger/wd-swinv2-tagger-v3. Put the images in input/my_images.
What runs: every image is tagged (general tags above 0.35, characters above 0.85, brackets escaped, underscores
made spaces); images that already have a caption .txt keep it (only_missing).
You get: output/atelier/captions/my_images/<folder>/*.txt.
Change for real use: sub_path, and destination beside_images to write the .txt files next to the images (old ones
are backed up first)."""

CAPTION = dict(note=CAPTION_NOTE, nodes=[
    node("images", "AtelierLoadDataset", "Images", (0, 0), dict(
        folder="input", sub_path="my_images", caption_source="sidecar", on_missing_caption="empty",
        verify_images=True)),
    node("tag", "AtelierTagDataset", "WD14 Tags", (1, 0), dict(
        caption_mode="only_missing", model="wd-swinv2-tagger-v3", general_threshold=0.35, character_threshold=0.85,
        escape_brackets=True, underscores_to_spaces=True), {"dataset": ("images", 0)}),
    node("write", "AtelierWriteCaptions", "Write Captions", (2, 0), dict(
        dry_run=False, destination="output_folder", set_name="my_images"), {"dataset": ("tag", 0)}),
])

WORKFLOWS = {
    "caption_a_folder": CAPTION,
    "starsector_portrait_style": STARSECTOR,
    "style_and_character_from_screencaps": KORRA,
    "xy_grid_of_a_finished_run": RUN_GRID,
    "merge_resize_extract_loras": LORA_TOOLS,
}
