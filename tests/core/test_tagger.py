"""WD14 tagger on a tiny real ONNX model built in the test: preprocessing, thresholds, MCut, formatting, batching."""

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnx", reason="onnx is in the test extra: pip install -e '.[test]'")
pytest.importorskip("onnxruntime", reason="onnxruntime is in the test extra: pip install -e '.[test]'")

from tiny_tagger import TAGS, write_tiny_tagger  # noqa: E402

from atelier.core import tagger as tg  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_tagger(tmp_path_factory.mktemp("wd14") / "tiny-v1")


def tags_of(tagger, img, **kw):
    probs = tg.predict(tagger, [img])[0]
    return tg.select_tags(probs, tagger.table, **kw)


def names(result):
    return [n for n, _ in result.general]


def test_blue_image_lights_blue_because_input_is_bgr(model_dir):
    tagger = tg.load_tagger(model_dir)
    assert tagger.size == 32 and tagger.max_batch is None
    assert "blue" in names(tags_of(tagger, Image.new("RGB", (40, 30), (0, 0, 255))))
    assert "red" not in names(tags_of(tagger, Image.new("RGB", (40, 30), (0, 0, 255))))
    assert "red" in names(tags_of(tagger, Image.new("RGB", (40, 30), (255, 0, 0))))


def test_preprocess_is_bgr_white_padded_square():
    arr = tg.preprocess(Image.new("RGB", (20, 10), (255, 0, 0)), 20)
    assert arr.shape == (20, 20, 3) and arr.dtype == np.float32
    assert tuple(arr[10, 10]) == (0.0, 0.0, 255.0)  # red in BGR order
    assert tuple(arr[0, 10]) == (255.0, 255.0, 255.0)  # white padding above the landscape image
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert (tg.preprocess(rgba, 8) == 255.0).all()  # transparent pixels become white


def test_transparent_image_is_tagged_on_white(model_dir):
    tagger = tg.load_tagger(model_dir)
    assert "white_background" in names(tags_of(tagger, Image.new("RGBA", (16, 16), (0, 0, 0, 0))))
    assert "white_background" not in names(tags_of(tagger, Image.new("RGB", (16, 16), (0, 0, 0))))


def test_thresholds_and_rating(model_dir):
    tagger = tg.load_tagger(model_dir)
    r = tags_of(tagger, Image.new("RGB", (16, 16), (0, 0, 255)), general_threshold=0.5, character_threshold=0.85)
    assert names(r) == ["blue", "long_hair", "^_^", "smile_(happy)"]  # by confidence; 'faint' (0.27) is below
    assert [n for n, _ in r.characters] == ["hatsune_miku"]
    assert r.rating[0] == "general"
    high = tags_of(tagger, Image.new("RGB", (16, 16), (0, 0, 255)), general_threshold=0.7)
    assert names(high) == ["blue", "long_hair"]


def test_mcut_threshold_is_midpoint_of_largest_gap():
    assert tg.mcut_threshold(np.array([0.9, 0.85, 0.3, 0.25])) == pytest.approx(0.575)
    assert tg.mcut_threshold(np.array([0.5])) == 0.5


def test_mcut_selection(model_dir):
    tagger = tg.load_tagger(model_dir)
    r = tags_of(tagger, Image.new("RGB", (16, 16), (0, 0, 255)), general_mcut=True, character_mcut=True)
    gen = [p for i, (n, c, _, _) in enumerate(TAGS) if c == 0 for p in [tg.predict(
        tagger, [Image.new("RGB", (16, 16), (0, 0, 255))])[0][i]]]
    expected = tg.mcut_threshold(np.array(gen))
    assert r.thresholds["general"] == pytest.approx(expected)
    assert all(p > expected for _, p in r.general)


def test_formatting_escape_underscores_kaomoji_exclude_sort(model_dir):
    tagger = tg.load_tagger(model_dir)
    r = tags_of(tagger, Image.new("RGB", (16, 16), (0, 0, 255)), general_threshold=0.5)
    assert tg.caption_from_result(r) == "hatsune miku, blue, long hair, ^_^, smile \\(happy\\)"
    assert tg.caption_from_result(r, escape=False, underscores_to_spaces=False, include_characters=False) == \
        "blue, long_hair, ^_^, smile_(happy)"
    assert tg.caption_from_result(r, exclude=["long hair", "hatsune_miku"], sort="alphabetical") == \
        "^_^, blue, smile \\(happy\\)"
    with pytest.raises(ValueError, match="confidence, alphabetical"):
        tg.caption_from_result(r, sort="random")


def test_batched_equals_one_by_one_and_session_is_cached(model_dir):
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray((rng.random((12 + i, 20, 3)) * 255).astype(np.uint8)) for i in range(7)]
    tagger = tg.load_tagger(model_dir)
    batched = tg.predict(tagger, imgs, batch_size=4)
    single = np.concatenate([tg.predict(tagger, [im], batch_size=1) for im in imgs])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)
    assert tg.load_tagger(model_dir) is tagger  # one cached session per model
    assert tg.predict(tagger, []).shape == (0, len(TAGS))  # image batch of 0


def test_fixed_batch_model_runs_one_at_a_time(tmp_path):
    tagger = tg.load_tagger(write_tiny_tagger(tmp_path / "fixed", batch_dim=1))
    assert tagger.max_batch == 1
    assert tg.predict(tagger, [Image.new("RGB", (8, 8))] * 3, batch_size=8).shape == (3, len(TAGS))


def test_model_folder_without_csv(tmp_path):
    with pytest.raises(tg.TaggerError, match="selected_tags.csv.*missing|missing.*selected_tags"):
        tg.load_tagger(write_tiny_tagger(tmp_path / "nocsv", write_csv=False))


def test_csv_with_wrong_columns(tmp_path):
    with pytest.raises(tg.TaggerError, match=r"columns \['id', 'tag', 'kind', 'n'\].*tag_id,name,category,count"):
        tg.load_tagger(write_tiny_tagger(tmp_path / "badcsv", csv_header="id,tag,kind,n"))


def test_unexpected_input_shape(tmp_path):
    with pytest.raises(tg.TaggerError, match=r"expects input shape \['N', 3, 32, 32\].*NHWC"):
        tg.load_tagger(write_tiny_tagger(tmp_path / "nchw", input_shape=["N", 3, 32, 32]))


def test_missing_model_file(tmp_path):
    with pytest.raises(tg.TaggerError, match="has no model.onnx"):
        tg.load_tagger(tmp_path)


def test_flat_onnx_plus_csv_layout_and_listing(tmp_path):
    folder = write_tiny_tagger(tmp_path / "models" / "folder-model")
    (folder / "model.onnx").rename(tmp_path / "models" / "flat-v2.onnx")
    (folder / "selected_tags.csv").rename(tmp_path / "models" / "flat-v2.csv")
    write_tiny_tagger(tmp_path / "models" / "folder-model")
    (tmp_path / "models" / "lonely.onnx").write_bytes(b"")  # no csv beside it: not offered
    assert tg.list_models([tmp_path / "models", tmp_path / "missing"]) == ["flat-v2.onnx", "folder-model"]
    flat = tg.load_tagger(tmp_path / "models" / "flat-v2.onnx")
    assert "blue" in names(tags_of(flat, Image.new("RGB", (8, 8), (0, 0, 255))))


@pytest.mark.parametrize("old, mode, expected", [
    ("korra, smile", "replace", "blue, long hair"),
    ("korra, blue", "append", "korra, blue, long hair"),
    ("korra, blue", "prepend", "long hair, korra, blue"),
    ("korra", "only_missing", "korra"),
    ("", "only_missing", "blue, long hair"),
])
def test_merge_caption(old, mode, expected):
    assert tg.merge_caption(old, "blue, long hair", mode) == expected


def test_tag_dataset_writes_captions_into_it(tmp_path, model_dir):
    from atelier.core import dataset as ds

    folder = tmp_path / "set"
    folder.mkdir()
    Image.new("RGB", (20, 20), (0, 0, 255)).save(folder / "blue.png")
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(folder / "clear.png")
    d = ds.add_downscaled_copy(ds.scan_folder(folder, on_missing_caption="empty"), 64, 1)  # two subsets, same files
    opts = tg.TagOptions(general_threshold=0.5, include_characters=False, exclude=("long hair", "^_^"))
    tagged, details = tg.tag_dataset(d, tg.load_tagger(model_dir), opts, batch_size=2)
    caps = {(s.name, i.source.rsplit("/", 1)[-1]): i.caption for s in tagged.subsets for i in s.items}
    assert caps[("set", "blue.png")] == caps[("set_64px", "blue.png")] == "blue, smile \\(happy\\)"
    assert caps[("set", "clear.png")].startswith("white background")
    assert len(details) == 2 and all("general" in v for v in details.values())
    assert {i.caption for i in d.subsets[0].items} == {""}  # the input dataset is unchanged


def test_without_onnxruntime_the_error_says_how_to_install(tmp_path, monkeypatch):
    folder = write_tiny_tagger(tmp_path / "m")
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # what an absent package looks like
    tg._CACHE.clear()
    with pytest.raises(tg.TaggerUnavailable, match=r"needs onnxruntime.*pip install onnxruntime"):
        tg.load_tagger(folder)
