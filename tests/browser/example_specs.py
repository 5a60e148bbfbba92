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

BANNER_NOTE = """Banner generator (Steam StyleGAN2 notebook, translated to diffusion: a LoRA instead of a GAN).

Download: an SD 1.5 checkpoint (v1-5-pruned-emaonly.safetensors) into models/checkpoints, and a second LoRA to mix
with (any style LoRA for SD 1.5) as models/loras/second_style.safetensors.
Put the banners (the notebook used 14,035 Steam banners) in input/steam_banners; no captions needed.

What runs: every banner is letterboxed to 256x256 (the notebook's resolution) and mirrored at random
(--mirror-augment=true). Dataset Statistics shows what the images-seen budget of 5,000 kimg means for this folder
(passes over the mirrored images, optimizer steps); the LoRA trains for exactly that budget: 156,250 optimizer steps
of 4 x 8 accumulated = 32 images (5,000,000 images), saving every 1,000 kimg (31,250 steps) like the notebook's
network-snapshot files. Then, on the trained LoRA:
- "truncation" side by side: 25 seeds at strength 1.0 (left) and 0.7 (right), same seeds;
- the A x B mixing grid: this LoRA (rows) with second_style.safetensors (columns) at 0, 0.5, 1;
- a real-vs-generated sheet: 16 real banners beside generations from their captions, with and without the LoRA;
- the "projection" (reconstruction) check: 23 banners noised to 0.6 and regenerated, with distances to the target.

You get: models/loras/atelier/steam_banners.safetensors (and its step files), and output/atelier/grids/
banner_truncation_*.png, banner_mixing_*.png, banner_real_vs_generated_*.png and banner_projection_*.png.
Change for real use: sub_path, lora_b of the mixing grid, max_steps if your batch differs (steps = kimg x 1000 /
(batch_size x grad_accum), Dataset Statistics prints it)."""

BANNER_PROMPT = "a steam banner"


def banner_grid(key, type_, title, pos, widgets, lora_links):
    """One of the banner comparison sheets at 256x256 with the notebook-like sampler settings."""
    links = {"model": ("ckpt", 0), "clip": ("ckpt", 1), "vae": ("ckpt", 2), **lora_links}
    negative = {} if type_ == "AtelierCompareSideBySide" else {"negative": ""}  # side by side has one per side
    return node(key, type_, title, pos, dict(
        **negative, seed=0, steps=20, cfg=7.0, sampler="euler", scheduler="normal", width=256, height=256,
        **widgets), links)


BANNER = dict(note=BANNER_NOTE, nodes=[
    loader((0, 0)),
    node("banners", "AtelierLoadDataset", "Steam Banners", (0, 1), dict(
        folder="input", sub_path="steam_banners", role="train", repeats=1, caption_source="fixed",
        fixed_caption=BANNER_PROMPT, subset_name="banners", verify_images=True)),
    node("prepare", "AtelierPrepareDataset", "Letterbox 256", (1, 1), dict(
        mode="letterbox", width=256, height=256, pad_color="black"), {"dataset": ("banners", 0)}),
    node("mirror", "AtelierMirrorDataset", "Mirror Augment", (2, 1), dict(mode="random"),
         {"dataset": ("prepare", 0)}),
    node("stats", "AtelierDatasetStats", "Images-Seen Budget (5,000 kimg)", (3, 1), dict(
        batch_size=4, epochs=357, grad_accum=8, kimg=5000.0), {"dataset": ("mirror", 0)}),
    node("train", "AtelierTrainLoRAAdvanced", "Banner LoRA (5,000 kimg)", (3, 0), dict(
        output_name="steam_banners", rank=32, alpha=16.0, unet_lr=1e-4, epochs=357, max_steps=156250,
        batch_size=4, grad_accum=8, save_every_epochs=0, save_every_steps=31250, seed=0),
         {"model": ("ckpt", 0), "clip": ("ckpt", 1), "vae": ("ckpt", 2), "dataset": ("mirror", 0)}),
    banner_grid("side", "AtelierCompareSideBySide", "Truncation: 1.0 vs 0.7", (4, 0), dict(
        prompts=BANNER_PROMPT, strength_a=1.0, strength_b=0.7, seeds=25, grid_name="banner_truncation"),
        {"lora_files_a": ("train", 4), "lora_files_b": ("train", 4)}),
    banner_grid("mixing", "AtelierPlotStrengthMatrix", "Mixing A x B", (4, 1), dict(
        strengths_a="0, 0.5, 1", lora_b="second_style.safetensors", strengths_b="0, 0.5, 1", positive=BANNER_PROMPT,
        grid_name="banner_mixing"), {"lora_files_a": ("train", 4)}),
    banner_grid("realgen", "AtelierCompareRealGenerated", "Real vs Generated", (5, 0), dict(
        count=16, strength=1.0, prefix="", include_base=True, grid_name="banner_real_vs_generated"),
        {"dataset": ("mirror", 0), "lora_files": ("train", 4)}),
    banner_grid("projection", "AtelierCheckReconstruction", "Projection (Reconstruction Check)", (5, 1), dict(
        count=23, strength=1.0, prefix="", denoise=0.6, grid_name="banner_projection"),
        {"dataset": ("mirror", 0), "lora_files": ("train", 4)}),
])

RENDERS_NOTE = """Character from 3D renders (Emanon's copy-machine guides: "The Only Brilliant Way" and
"Tonight We Learn Characters").

Download: an SD 1.5 checkpoint (v1-5-pruned-emaonly.safetensors) into models/checkpoints, and a WD14 SwinV2 tagger
(SmilingWolf/wd-swinv2-tagger-v3: model.onnx + selected_tags.csv) into models/wd14_tagger/wd-swinv2-tagger-v3.
Put the art-style renders (step 1: other characters, square, transparent background) in input/hs2_style_renders,
and your character's renders (same angles) in input/blonde_elf_renders, named by composition: face_*, portrait_*,
bust_*, cowboy_*.

What runs: (1) the copier LoRA on the style renders (dim 64, alpha 32, lr 1e-4, text encoder 2e-5, 10 epochs,
repeats 10, 512, transparent -> white); (2) the character's renders are tagged by WD14 (threshold 0.5, brackets
escaped) and the six caption edits run: remove the features to memorise (hair, eyes, ears), remove unrelated tags
(and the tagger's composition guesses), set the composition tag from the file name, add "realistic", add "nose,
lips" where the face shows, put the trigger words first (then duplicates are dropped); (3) a 384x384 copy of every
render joins with repeats 2 (originals repeats 10); (4) Train Copy-Machine LoRA merges the copier at 1.0 and trains
the character LoRA (dim 32, alpha 16, lr 1e-4, text encoder 2e-5, 10 epochs) with the style renders as
regularisation (repeats 1), saving every epoch, and ships the character alone; (5) an epochs 8-10 x strength grid
and a leakage check of the shipped LoRA on the ORIGINAL model.

You get: models/loras/atelier/hs2_copier.safetensors, models/loras/atelier/blonde_elf.safetensors, and
output/atelier/grids/blonde_elf_strengths_*.png and blonde_elf_leakage_*.png.
Change for real use: the folders' sub_path, the tags of both Remove Tags nodes, the trigger words, the prompts."""

EDGES = {"model": ("ckpt", 0), "clip": ("ckpt", 1), "vae": ("ckpt", 2)}


def tag_edit(key, type_, title, pos, source, **widgets):
    """One caption edit chained after `source`."""
    return node(key, type_, title, pos, widgets, {"dataset": (source, 0)})


RENDERS = dict(note=RENDERS_NOTE, nodes=[
    loader((0, 0)),
    node("style", "AtelierLoadDataset", "Art-Style Renders (copier set)", (0, 1), dict(
        folder="input", sub_path="hs2_style_renders", role="train", repeats=10, caption_source="folder",
        subset_name="style", verify_images=True)),
    node("style_prep", "AtelierPrepareDataset", "Style 512 (white background)", (1, 1), dict(
        mode="crop", width=512, height=512, background="white"), {"dataset": ("style", 0)}),
    node("copier", "AtelierTrainLoRAAdvanced", "Copier LoRA (dim 64 / alpha 32)", (2, 0), dict(
        output_name="hs2_copier", rank=64, alpha=32.0, unet_lr=1e-4, te_lr=2e-5, train_text_encoder=True, epochs=10,
        batch_size=1, seed=0), {**EDGES, "dataset": ("style_prep", 0)}),
    node("char", "AtelierLoadDataset", "Character Renders", (0, 2), dict(
        folder="input", sub_path="blonde_elf_renders", role="train", repeats=10, caption_source="sidecar",
        on_missing_caption="empty", subset_name="character", verify_images=True)),
    node("tag", "AtelierTagDataset", "WD14 Tags (0.5, escaped)", (1, 2), dict(
        caption_mode="replace", model="wd-swinv2-tagger-v3", general_threshold=0.5, character_threshold=0.85,
        escape_brackets=True, underscores_to_spaces=True), {"dataset": ("char", 0)}),
    tag_edit("memorise", "AtelierRemoveTags", "1. Remove Features to Memorise", (3, 1), "tag",
             tags="*hair, *eyes, pointy ears, elf", match="wildcard"),
    tag_edit("unrelated", "AtelierRemoveTags", "2. Remove Unrelated Tags", (3, 2), "memorise",
             tags="flandre scarlet, touhou, portrait, upper body, cowboy shot, close-up", match="exact"),
    tag_edit("face", "AtelierAddTags", "3. Composition: close-up", (4, 1), "unrelated",
             tags="close-up", position="start", only_filenames="face_*"),
    tag_edit("portrait", "AtelierAddTags", "3. Composition: portrait", (4, 2), "face",
             tags="portrait", position="start", only_filenames="portrait_*"),
    tag_edit("bust", "AtelierAddTags", "3. Composition: upper body", (4, 3), "portrait",
             tags="upper body", position="start", only_filenames="bust_*"),
    tag_edit("cowboy", "AtelierAddTags", "3. Composition: cowboy shot", (4, 4), "bust",
             tags="cowboy shot", position="start", only_filenames="cowboy_*"),
    tag_edit("realistic", "AtelierAddTags", "4. Add realistic", (5, 1), "cowboy", tags="realistic", position="end"),
    tag_edit("nose", "AtelierAddTags", "5. Add nose, lips", (5, 2), "realistic", tags="nose, lips", position="end",
             only_without_tags="from behind"),
    tag_edit("trigger", "AtelierSetTriggerWords", "6. Trigger Words First", (5, 3), "nose",
             trigger_words="blonde elf"),
    tag_edit("clean", "AtelierCleanTags", "Clean Tags", (5, 4), "trigger", strip_weights=False, dedupe=True,
             keep_first=1),
    node("char_prep", "AtelierPrepareDataset", "Character 512 (white background)", (6, 1), dict(
        mode="crop", width=512, height=512, background="white"), {"dataset": ("clean", 0)}),
    node("small", "AtelierAddDownscaledCopy", "384x384 Copy x 2", (6, 2), dict(
        size=384, repeats=2, subsets="character"), {"dataset": ("char_prep", 0)}),
    node("character", "AtelierTrainCopyMachine", "Character LoRA (dim 32 / alpha 16)", (7, 0), dict(
        output_name="blonde_elf", copier_strength_1=1.0, rank=32, alpha=16.0, unet_lr=1e-4, epochs=10,
        batch_size=1, train_text_encoder=True, te_lr=2e-5, seed=0, prior_loss_weight=1.0, reg_repeats=1,
        save_every_epochs=1),
         {**EDGES, "dataset": ("small", 0), "copier_files": ("copier", 4), "regularization": ("style_prep", 0)}),
    node("grid", "AtelierXYGrid", "Strength Grid (original model)", (8, 0), dict(
        positive="blonde elf, 1girl, looking back, flower field background", negative="", x_kind="strength",
        x_values="0.6,0.8,1", y_kind="lora", y_values="run 8-10", baseline="row", steps=20, cfg=7.0, sampler="euler",
        scheduler="normal", seed=0, width=512, height=768, grid_name="blonde_elf_strengths"),
         {**EDGES, "lora_files": ("character", 4)}),
    node("leak", "AtelierCheckLeakage", "Leakage (original model)", (8, 1), dict(
        strength=1.0, seeds=2, steps=20, cfg=7.0, sampler="euler", scheduler="normal", seed=0, width=512,
        height=512, grid_name="blonde_elf_leakage"), {**EDGES, "lora_files": ("character", 4)}),
])

SLIDER_NOTE = """Slider LoRA from prompts (Concept Sliders / LECO), then its strengths from -1 to +1.

Download: an SD 1.5 checkpoint (v1-5-pruned-emaonly.safetensors) into models/checkpoints. No images needed.
What runs: a rank-4 slider (alpha 1, lr 2e-4, 1,000 steps) that moves "a photo of a person" toward "smiling" at +1
and toward "frowning" at -1 (both directions trained), then an XY grid of the slider at -1, -0.5, 0, 0.5, 1
over four seeds.
You get: models/loras/atelier/smile_slider.safetensors and output/atelier/grids/smile_slider_strengths_*.png.
Change for real use: target / positive / negative / neutral (or a prompts_yaml), output_name, the grid prompt."""

SLIDER = dict(note=SLIDER_NOTE, nodes=[
    loader((0, 0)),
    node("slider", "AtelierTrainTextSlider", "Smile Slider", (1, 0), dict(
        output_name="smile_slider", target="a photo of a person", positive="a photo of a person, smiling",
        negative="a photo of a person, frowning", neutral="a photo of a person", action="enhance",
        guidance_scale=4.0, resolution=512, denoise_steps=50, bidirectional=True, rank=4, alpha=1.0, unet_lr=2e-4,
        max_steps=1000, seed=0), {"model": ("ckpt", 0), "clip": ("ckpt", 1)}),
    node("grid", "AtelierXYGrid", "Slider -1 ... +1", (2, 0), dict(
        positive="a photo of a person", negative="", x_kind="strength", x_values="-1,-0.5,0,0.5,1", y_kind="seed",
        y_values="0,1,2,3", baseline="none", steps=20, cfg=7.0, sampler="euler", scheduler="normal", seed=0,
        width=512, height=512, grid_name="smile_slider_strengths"),
         {"model": ("ckpt", 0), "clip": ("ckpt", 1), "vae": ("ckpt", 2), "lora_files": ("slider", 4)}),
])

WORKFLOWS = {
    "caption_a_folder": CAPTION,
    "starsector_portrait_style": STARSECTOR,
    "style_and_character_from_screencaps": KORRA,
    "xy_grid_of_a_finished_run": RUN_GRID,
    "merge_resize_extract_loras": LORA_TOOLS,
    "banner_generator": BANNER,
    "character_from_3d_renders": RENDERS,
    "slider_from_prompts": SLIDER,
}
