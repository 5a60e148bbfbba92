"""Crash hygiene on real files and tiny real trainers: leftover temps, skipped fp16 steps, NaN and resume notes."""

import json
import os
import time

import pytest
import torch

from test_trainer import Rig, make_samples

from atelier.core.lora_io import save_lora, write_safetensors
from atelier.core.lora_math import extract
from atelier.core.temps import pid_alive, remove_stale_temps, temp_path
from atelier.trainers.checkpoint import load_state, resume_warnings, run_environment, save_state
from atelier.trainers.loop import Callbacks, Trainer, TrainConfig, TrainingDiverged, TrainingStopped

DEAD = 2**31 - 2  # above every kernel's pid_max: no process can have it
LIVE = os.getpid()
HEX = "0123abcd"
posix_only = pytest.mark.skipif(os.name == "nt", reason="process ids are not probed on Windows (age decides)")


def touch(path, *, age=0.0, folder=False):
    if folder:
        path.mkdir()
        (path / "lora.safetensors").write_bytes(b"partial")
        os.utime(path / "lora.safetensors", (time.time() - age,) * 2)
    else:
        path.write_bytes(b"\0" * 16)  # a kill mid-save leaves a partly written, partly zero file
    os.utime(path, (time.time() - age,) * 2)
    return path


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_dead_writers_temps_of_this_name_are_removed_and_nothing_else(tmp_path):
    target = "x.safetensors"
    removed = [
        touch(tmp_path / f".x.safetensors.atelier-{DEAD}-{HEX}.tmp"),  # ours, writer gone
        touch(tmp_path / f".x.safetensors.atelier-{LIVE}-{HEX}.tmp", age=3600),  # ours, untouched for an hour
        touch(tmp_path / f".x.safetensors.atelier-{DEAD}-{HEX}.old", folder=True),  # a displaced old folder
        touch(tmp_path / f".x.safetensors.tmp-{DEAD}"),  # an earlier version's checkpoint temp
        touch(tmp_path / ".x.safetensors.k3_9zq0a.tmp", age=3600),  # an earlier version's save_lora/mkstemp temp
    ]
    kept = [
        touch(tmp_path / "x.safetensors"),
        touch(tmp_path / f".x.safetensors.atelier-{LIVE}-89abcdef.tmp"),  # a write in progress in a live process
        touch(tmp_path / ".x.safetensors.p0_4kd7m.tmp"),  # no pid, and fresh: may still be written
        touch(tmp_path / ".x.safetensors", age=3600),  # a user's hidden file of the same name
        touch(tmp_path / ".x.safetensors.notes.tmp", age=3600),  # not our shape (5 characters, not 8)
        touch(tmp_path / f".x.safetensors.atelier-{DEAD}-{HEX}.tmp.keep", age=3600),  # ours plus a suffix
        touch(tmp_path / f".x.safetensors.atelier-{DEAD}-ZZZZZZZZ.tmp", age=3600),  # not hex
        touch(tmp_path / f".x.safetensors2.atelier-{DEAD}-{HEX}.tmp", age=3600),  # another target's temp
        touch(tmp_path / f".y.safetensors.atelier-{DEAD}-{HEX}.tmp", age=3600),
        touch(tmp_path / f"x.safetensors.atelier-{DEAD}-{HEX}.tmp", age=3600),  # not hidden: a user's file
        touch(tmp_path / f".*.safetensors.atelier-{DEAD}-{HEX}.tmp", age=3600),  # named like a glob of any target
    ]
    gone = remove_stale_temps(tmp_path, target)
    assert sorted(gone) == sorted(p.name for p in removed)
    assert names(tmp_path) == sorted(p.name for p in kept)


def test_a_target_named_like_a_glob_matches_only_itself(tmp_path):
    mine = touch(tmp_path / f".a[bc]*.safetensors.atelier-{DEAD}-{HEX}.tmp")
    others = [touch(tmp_path / f".ab.safetensors.atelier-{DEAD}-{HEX}.tmp"),  # what glob 'a[bc]*' would match
              touch(tmp_path / f".acxyz.safetensors.atelier-{DEAD}-{HEX}.tmp"),
              touch(tmp_path / "a[bc]*.safetensors")]
    assert remove_stale_temps(tmp_path, "a[bc]*.safetensors") == [mine.name]
    assert names(tmp_path) == sorted(p.name for p in others)


def test_symlinks_named_like_our_temps_are_never_followed_or_removed(tmp_path):
    victim = touch(tmp_path / "victim.bin")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (tmp_path / f".x.safetensors.atelier-{DEAD}-{HEX}.tmp").symlink_to(victim)
    (tmp_path / f".x.atelier-{DEAD}-{HEX}.tmp").symlink_to(outside, target_is_directory=True)
    assert remove_stale_temps(tmp_path, "x.safetensors") == []
    assert remove_stale_temps(tmp_path, "x") == []
    assert victim.exists() and (outside / "keep.txt").read_text() == "keep"


def test_a_name_test_selects_several_targets_and_a_missing_folder_is_fine(tmp_path):
    touch(tmp_path / f".run-000001.safetensors.atelier-{DEAD}-{HEX}.tmp")
    touch(tmp_path / f".run.safetensors.atelier-{DEAD}-{HEX}.tmp")
    touch(tmp_path / f".other.safetensors.atelier-{DEAD}-{HEX}.tmp")
    gone = remove_stale_temps(tmp_path, lambda name: name.startswith("run"))
    assert len(gone) == 2 and names(tmp_path) == [f".other.safetensors.atelier-{DEAD}-{HEX}.tmp"]
    assert remove_stale_temps(tmp_path / "missing", "x") == []


@posix_only
def test_pid_probe():
    assert pid_alive(os.getpid()) and not pid_alive(DEAD) and not pid_alive(0) and not pid_alive(-1)


def test_temp_names_are_hidden_carry_the_pid_and_are_recognised(tmp_path):
    tmp = temp_path(tmp_path / "x.safetensors")
    assert tmp.parent == tmp_path and tmp.name.startswith(f".x.safetensors.atelier-{os.getpid()}-")
    assert tmp.name.endswith(".tmp") and temp_path(tmp_path / "x", "old").name.endswith(".old")
    touch(tmp, age=3600)
    assert remove_stale_temps(tmp_path, "x.safetensors") == [tmp.name]


def lora():
    return {"lora_unet_a.lora_down.weight": torch.ones(2, 4), "lora_unet_a.lora_up.weight": torch.ones(4, 2),
            "lora_unet_a.alpha": torch.tensor(2.0)}


def test_save_lora_removes_a_killed_saves_temp_and_keeps_user_files(tmp_path):
    stale = touch(tmp_path / f".x.safetensors.atelier-{DEAD}-{HEX}.tmp")
    user = [touch(tmp_path / ".x.safetensors.mine.tmp"), touch(tmp_path / f".y.safetensors.atelier-{DEAD}-{HEX}.tmp")]
    save_lora(tmp_path / "x.safetensors", lora(), {})
    assert not stale.exists() and all(p.exists() for p in user)
    assert names(tmp_path) == sorted(["x.safetensors"] + [p.name for p in user])  # and no temp of its own left


def test_a_cancel_before_the_rename_leaves_no_file_and_no_temp(tmp_path):
    def cancel():
        raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        write_safetensors(tmp_path / "ckpt.safetensors", {"w": torch.ones(3)}, {}, what="checkpoint",
                          before_replace=cancel)
    assert names(tmp_path) == []


def test_save_state_removes_dead_temp_folders_of_the_same_state_only(tmp_path):
    rig = Rig()
    t = rig.trainer(make_samples(), max_steps=1, batch_size=4)
    stale = [touch(tmp_path / f".run.atelier-{DEAD}-{HEX}.tmp", folder=True),
             touch(tmp_path / ".run.tmp-ab_c12x9", folder=True, age=3600)]  # an earlier version's mkdtemp folder
    other = touch(tmp_path / f".run2.atelier-{DEAD}-{HEX}.tmp", folder=True)
    save_state(tmp_path / "run", t, t.run())
    save_state(tmp_path / "run", t, t.run())  # replaces the folder: its displaced copy must not stay either
    assert all(not p.exists() for p in stale) and other.exists()
    assert names(tmp_path) == sorted(["run", other.name])


def overflowing(rig, on_calls):
    """A denoiser whose fp16 gradient overflows on the given calls (its forward output is finite, zero)."""
    calls = {"n": 0}

    def denoise(x_t, sigma, cond, **extra):
        calls["n"] += 1
        out = rig.denoise(x_t, sigma, cond)
        if calls["n"] in on_calls:  # forward: x/1e30 is 0 in fp16; backward: grad·1e30 is inf in fp16
            return (out.half() / 1e30).float() * 1e30
        return out

    return denoise


def test_fp16_steps_skipped_by_the_loss_scaler_are_counted_and_reported(tmp_path):
    rig = Rig()
    seen = []
    config = TrainConfig(unet_lr=1e-2, max_steps=5, batch_size=4, precision="fp16", save_every_epochs=0)
    t = Trainer(config, rig.network, overflowing(rig, {2, 3}), rig.ms, make_samples(), rig.encode,
                Callbacks(on_step=seen.append))
    state = t.run()
    assert state.step == 5 and state.skipped_steps == [2, 3]
    assert [i.skipped for i in seen] == [False, True, True, False, False]
    assert [i.skipped_steps for i in seen] == [0, 1, 2, 2, 2]
    assert t.scaler.get_scale() == 2.0**14  # halved once per skipped step
    save_state(tmp_path / "s", t, state)
    saved = json.loads((tmp_path / "s" / "state.json").read_text())
    assert saved["skipped_steps"] == [2, 3] and saved["scaler"]["scale"] == 2.0**14
    fresh = Rig()
    again = Trainer(config, fresh.network, fresh.denoise, fresh.ms, make_samples(), fresh.encode)
    assert load_state(tmp_path / "s", again).skipped_steps == [2, 3]
    assert again.scaler.get_scale() == 2.0**14  # the resumed run continues with the same loss scale


def test_a_skipped_step_changes_no_weight():
    rig = Rig()
    config = TrainConfig(unet_lr=1e-2, max_steps=2, batch_size=4, precision="fp16", save_every_epochs=0,
                         ema_decay=0.5)
    snapshots = []
    t = Trainer(config, rig.network, overflowing(rig, {2}), rig.ms, make_samples(), rig.encode,
                Callbacks(on_step=lambda info: snapshots.append(
                    ({k: v.clone() for k, v in rig.network.kohya_state_dict(torch.float32).items()},
                     [e.clone() for e in t.ema.state_tensors().values()]))))
    t.run()
    (w1, e1), (w2, e2) = snapshots
    assert all(torch.equal(w1[k], w2[k]) for k in w1) and all(torch.equal(a, b) for a, b in zip(e1, e2))


def exploding(rig, from_call):
    calls = {"n": 0}

    def denoise(x_t, sigma, cond, **extra):
        calls["n"] += 1
        out = rig.denoise(x_t, sigma, cond)
        return out * float("nan") if calls["n"] >= from_call else out

    return denoise


def test_nan_message_says_no_checkpoint_was_saved_when_none_was():
    rig = Rig()
    t = Trainer(TrainConfig(unet_lr=1e-3, max_steps=5, batch_size=4, save_every_epochs=0), rig.network,
                exploding(rig, 3), rig.ms, make_samples(), rig.encode)
    with pytest.raises(TrainingDiverged, match="at step 3") as e:
        t.run()
    assert "no checkpoint of this run was saved" in str(e.value) and "intact" not in str(e.value)


def test_nan_message_names_the_step_of_the_last_checkpoint(tmp_path):
    rig = Rig()
    saved = []
    t = Trainer(TrainConfig(unet_lr=1e-3, max_steps=6, batch_size=4, save_every_steps=2, save_every_epochs=0),
                rig.network, exploding(rig, 4), rig.ms, make_samples(), rig.encode,
                Callbacks(on_checkpoint=lambda step, epoch, final: saved.append(step)))
    with pytest.raises(TrainingDiverged, match=r"at step 4 .*the last checkpoint, saved after step 2, is intact"):
        t.run()
    assert saved == [2]


def test_nan_after_a_resume_names_the_resumed_state(tmp_path):
    rig = Rig()
    t = rig.trainer(make_samples(), max_steps=3, batch_size=4)
    save_state(tmp_path / "s", t, t.run())
    second = Rig()
    t2 = Trainer(TrainConfig(unet_lr=1e-2, te_lr=1e-2, epochs=1, max_steps=6, batch_size=4, save_every_epochs=0),
                 second.network, exploding(second, 2), second.ms, make_samples(), second.encode)
    with pytest.raises(TrainingDiverged, match=r"at step 5 .*saved after step 3, is intact"):
        t2.run(load_state(tmp_path / "s", t2))


def test_state_records_what_exactness_depends_on_and_resume_says_what_changed(tmp_path):
    rig = Rig()
    t = rig.trainer(make_samples(), max_steps=2, batch_size=4)
    state = t.run()
    save_state(tmp_path / "s", t, state, environment={**run_environment(t, "torch.float16"), "torch_threads": 2})
    env = json.loads((tmp_path / "s" / "state.json").read_text())["environment"]
    assert env == {"torch_threads": 2, "device": "cpu", "lora_dtype": "float32", "model_dtype": "float16",
                   "torch": torch.__version__}
    now = {**env, "torch_threads": 1}
    (warning,) = resume_warnings(tmp_path / "s", now)
    assert "torch threads 2 then, 1 now" in warning and "differ slightly (~1e-5)" in warning
    assert resume_warnings(tmp_path / "s", env) == []
    (moved,) = resume_warnings(tmp_path / "s", {**env, "device": "cuda:0", "model_dtype": "bfloat16"})
    assert "device cpu then, cuda:0 now" in moved and "model weights dtype float16 then, bfloat16 now" in moved
    save_state(tmp_path / "default", t, state)  # without an explicit record: this process's own setup
    recorded = json.loads((tmp_path / "default" / "state.json").read_text())["environment"]
    assert recorded["torch_threads"] == torch.get_num_threads() and recorded["device"] == "cpu"


def test_a_state_saved_before_the_setup_was_recorded_gives_no_warning(tmp_path):
    rig = Rig()
    t = rig.trainer(make_samples(), max_steps=1, batch_size=4)
    save_state(tmp_path / "s", t, t.run())
    data = json.loads((tmp_path / "s" / "state.json").read_text())
    del data["environment"]
    (tmp_path / "s" / "state.json").write_text(json.dumps(data))
    assert resume_warnings(tmp_path / "s", run_environment(t)) == []


def test_training_stopped_is_a_runtime_error_that_hosts_show():
    assert issubclass(TrainingStopped, RuntimeError) and "resume" in TrainingStopped.__doc__


def test_extract_reports_each_layer_and_a_cancel_stops_it(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {f"w{i}": torch.randn(8, 8, generator=g) for i in range(3)}
    tuned = {k: v + 0.1 * torch.randn(8, 8, generator=g) for k, v in base.items()}
    names = {k: f"lora_unet_{k}" for k in base}
    calls = []
    modules, _, _ = extract(tuned, base, names, rank=2, on_layer=lambda done, total: calls.append((done, total)))
    assert len(modules) == 3 and calls == [(0, 3), (1, 3), (2, 3), (3, 3)]

    def cancel(done, total):
        if done == 1:
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        extract(tuned, base, names, rank=2, on_layer=cancel)

