"""The Space demo (`app.py`): depth files, the answer path against the processor's own, the page's notes and colour
map, the rendered examples, and the page itself driven in headless Chromium against the same answer function."""

import io
import os
import re

import gradio as gr
import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image

import app
from tests.browser import space_demo
from tests.conftest import make_inputs, reconfigured
from training.build_depth_model import build_depth_model
from training.depth_png import decode_depth_png, encode_depth_png
from training.tiny import save_tiny_depth_anything
from training.world import make_sample


QUESTION = "How far is the yellow sphere from the camera, in metres?"


@pytest.fixture(scope="module")
def model_dir(tiny_base, tmp_path_factory):
    """A tiny `add` depth-model folder whose greedy answers are printable text that changes with the depth map."""
    torch.manual_seed(0)
    model, processor = build_depth_model(tiny_base, depth_fusion="add")
    with torch.no_grad():
        # At the default init (std 0.02) the tied-embedding tiny model only repeats the prompt's last token ("\n"):
        # larger language-model weights and an open depth gate make the answer depend on the image and its depth.
        for name, weight in model.named_parameters():
            if weight.ndim == 2 and not name.startswith(("model.visual", "model.depth_encoder")):
                weight.normal_(std=0.3)
        model.model.depth_gate.gate.fill_(0.5)

    # Random byte-level tokens include newlines, control bytes and halves of UTF-8 characters, which a browser's text
    # box may normalise: answers of printable ASCII compare exactly with what the page shows.
    def printable(token_id: int) -> bool:
        text = processor.tokenizer.decode([token_id], skip_special_tokens=True)
        return text != "" and text.isascii() and text.isprintable()

    model.generation_config.suppress_tokens = [
        token_id
        for token_id in range(model.config.text_config.vocab_size)
        if token_id != processor.tokenizer.eos_token_id and not printable(token_id)
    ]
    folder = tmp_path_factory.mktemp("space_model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir):
    """The folder as the app loads it: Auto classes, remote code."""
    return app.load_model(model_dir)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return app.render_examples(tmp_path_factory.mktemp("examples"))


def reference_answer(model, processor, image, question, depth=None) -> str:
    """The same question through the processor's direct call (`processor(images=, text=, depth=)`), not the chat path."""
    inputs = make_inputs(processor, [[image]], None if depth is None else [[depth]], question=question)
    generated = model.generate(**inputs, max_new_tokens=app.MAX_NEW_TOKENS, do_sample=False)
    return processor.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def without_addresses(message: str) -> str:
    return re.sub(r" at 0x[0-9a-f]+", "", message)


# ----------------------------------------------------------------------------------------------------------------
# Depth files
# ----------------------------------------------------------------------------------------------------------------
def test_depth_files_reach_the_processor_in_their_units(loaded, tmp_path):
    """A 16-bit PNG is millimetres, a float .npy metres, a uint16 .npy millimetres: as the processor reads them."""
    _, processor = loaded
    image = Image.new("RGB", (3, 2))
    depth = np.array([[0.0, 0.5004, 1.2346], [2.0, 10.0, np.nan]], dtype=np.float32)
    millimetres = np.array([[0, 500, 1235], [2000, 10000, 0]], dtype=np.uint16)
    (tmp_path / "depth.png").write_bytes(encode_depth_png(depth))
    np.save(tmp_path / "metres.npy", depth)
    np.save(tmp_path / "millimetres.npy", millimetres)
    for name, metres in [
        ("depth.png", millimetres / np.float32(1000)),
        ("metres.npy", np.nan_to_num(depth)),  # NaN: no measurement, 0
        ("millimetres.npy", millimetres / np.float32(1000)),
    ]:
        read = processor.depth_maps([image], [app.read_depth_file(tmp_path / name)])[0]
        np.testing.assert_array_equal(read, metres, err_msg=name)


def test_bad_depth_files_are_page_errors_with_the_processors_message(loaded, examples, tmp_path):
    model, processor = loaded
    image, question = Image.open(examples[0][0]), examples[0][2]
    eight_bit, negative = np.full((224, 224), 7, np.uint8), np.full((224, 224), -1.0, np.float32)
    Image.fromarray(eight_bit).save(tmp_path / "eight_bit.png")
    np.save(tmp_path / "eight_bit.npy", eight_bit)
    np.save(tmp_path / "negative.npy", negative)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    contents = {
        "eight_bit.png": (tmp_path / "eight_bit.png").read_bytes(),
        "eight_bit.npy": eight_bit,
        "negative.npy": negative,
        "broken.png": b"\x89PNG not really",
    }
    for name, content in contents.items():
        with pytest.raises(ValueError) as processor_error:
            processor.depth_maps([image], [content])
        with pytest.raises(gr.Error) as page_error:
            app.respond(model, processor, image, str(tmp_path / name), question)
        # (PIL names the unreadable buffer by its address: the same message, another object.)
        assert without_addresses(page_error.value.message) == without_addresses(str(processor_error.value)), name

    np.save(tmp_path / "objects.npy", np.array([{"depth": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "truncated.npy").write_bytes((tmp_path / "negative.npy").read_bytes()[:100])
    (tmp_path / "depth.jpg").write_bytes(b"")
    unreadable = {
        "objects.npy": "Depth file 'objects.npy' is not a readable .npy array",
        "truncated.npy": "Depth file 'truncated.npy' is not a readable .npy array",
        "depth.jpg": "Depth file 'depth.jpg' is neither a 16-bit PNG (millimetres) nor a .npy array (metres).",
    }
    for name, message in unreadable.items():
        with pytest.raises(gr.Error) as page_error:
            app.respond(model, processor, image, str(tmp_path / name), question)
        assert page_error.value.message.startswith(message), name


# ----------------------------------------------------------------------------------------------------------------
# The answer path
# ----------------------------------------------------------------------------------------------------------------
def test_answer_with_depth_is_the_processors_answer_and_depends_on_depth(loaded, examples):
    model, processor = loaded
    rgb_path, depth_path, question, _, _ = examples[0]
    image, depth = Image.open(rgb_path), app.read_depth_file(depth_path)

    answer = app.answer_question(model, processor, image, question, depth)

    assert answer.text == reference_answer(model, processor, image, question, depth)
    assert answer.text.strip() and answer.text.isascii() and answer.text.isprintable()
    assert (answer.depth_source, answer.depth_is_metric) == ("uploaded", True)
    np.testing.assert_array_equal(answer.depth, decode_depth_png(depth))  # millimetres -> metres
    rgb_only = app.answer_question(model, processor, image, question)
    farther = app.answer_question(model, processor, image, question, answer.depth * 2)
    assert len({answer.text, rgb_only.text, farther.text}) == 3  # the depth map reaches the model
    valid = answer.depth[answer.depth > 0]
    assert app.describe_depth(answer, processor) == (
        f"Depth: the uploaded map (224×224, {valid.size / answer.depth.size:.0%} of pixels measured, "
        f"{valid.min():.2f}–{valid.max():.2f} m)."
    )


def test_without_depth_or_estimator_the_answer_is_rgb_only_and_says_so(loaded, examples):
    model, processor = loaded
    image = Image.open(examples[1][0])
    answer = app.answer_question(model, processor, image, QUESTION)
    assert answer.text == reference_answer(model, processor, image, QUESTION)
    assert (answer.depth, answer.depth_source) == (None, "none")
    assert "answered from RGB only" in app.describe_depth(answer, processor)
    text, colour_map, note = app.respond(model, processor, image, None, QUESTION)
    assert (text, colour_map, note) == (answer.text, None, app.describe_depth(answer, processor))


@pytest.mark.parametrize("metric", [True, False])
def test_missing_depth_is_estimated_by_the_processors_estimator(loaded, examples, tmp_path, metric):
    model, _ = loaded
    estimator_dir = save_tiny_depth_anything(tmp_path / "depth_anything", metric=metric)
    processor = reconfigured(loaded[1], depth_estimator=str(estimator_dir))
    image = Image.open(examples[0][0]).convert("RGB")

    answer = app.answer_question(model, processor, image, QUESTION)

    estimate = processor.estimator()([image])[0]
    np.testing.assert_array_equal(answer.depth, estimate)
    assert (answer.depth_source, answer.depth_is_metric) == ("estimated", metric)
    # The map shown is the map used: giving it explicitly gives the same answer as letting the processor estimate it.
    assert answer.text == reference_answer(model, processor, image, QUESTION, estimate)
    assert answer.text == reference_answer(model, processor, image, QUESTION)
    note = app.describe_depth(answer, processor)
    assert note.startswith(f"Depth: estimated by `{estimator_dir}` ({'metric' if metric else 'relative'}")
    if not metric:
        # Read at a median depth, the relative estimate the page shows (and the model reads) has that median.
        scaling = reconfigured(processor, relative_depth_median=4.0)
        scaled = app.answer_question(model, scaling, image, QUESTION)
        assert np.median(scaled.depth[scaled.depth > 0]) == pytest.approx(4.0, rel=1e-5)
        assert "read with its median at 4.00 m" in app.describe_depth(scaled, scaling)


def test_bad_input_is_a_gradio_error_with_the_processors_message(loaded, examples, tmp_path):
    model, processor = loaded
    rgb_path, _, question, _, _ = examples[0]
    image = Image.open(rgb_path)
    np.save(tmp_path / "wide.npy", np.ones((50, 150), np.float32))  # the image is square
    with pytest.raises(ValueError) as plain_error:
        app.answer_question(model, processor, image, question, np.ones((50, 150), np.float32))
    assert "must cover its image (same size or aspect ratio)" in str(plain_error.value)
    with pytest.raises(gr.Error) as page_error:
        app.respond(model, processor, image, str(tmp_path / "wide.npy"), question)
    assert page_error.value.message == str(plain_error.value)
    for image_in, question_in, message in [(None, question, "Upload an RGB image"), (image, " ", "Type a question")]:
        with pytest.raises(gr.Error, match=message):
            app.respond(model, processor, image_in, None, question_in)


def test_the_field_of_view_gives_the_cameras_intrinsics_and_a_bad_one_is_a_page_error(loaded, examples, monkeypatch):
    model, processor = loaded
    rgb_path, depth_path, question, _, hfov = examples[0]
    image = Image.open(rgb_path)
    # The example's rounded field of view gives the rendered camera's intrinsics to within the rounding.
    scene_index = app.EXAMPLE_SCENES[0][0]
    rendered = make_sample("test", scene_index, 0, app.EXAMPLE_SIZE, questions_per_scene=12).rendering.intrinsics
    np.testing.assert_allclose(app.intrinsics_from_fov(image, hfov), rendered, rtol=2e-3)
    assert app.intrinsics_from_fov(image, None) is None
    # The camera rides in the image block, beside its depth, to the processor.
    seen = []
    original = type(processor).apply_chat_template
    monkeypatch.setattr(
        type(processor),
        "apply_chat_template",
        lambda self, conversation, *args, **kwargs: (
            seen.append(conversation) or original(self, conversation, *args, **kwargs)
        ),
    )
    app.respond(model, processor, image, depth_path, question, hfov)
    assert seen[-1][0]["content"][0]["intrinsics"] == app.intrinsics_from_fov(image, hfov)
    app.respond(model, processor, image, depth_path, question)
    assert "intrinsics" not in seen[-1][0]["content"][0]
    with pytest.raises(gr.Error, match="field of view must lie between 0 and 180 degrees; got 200"):
        app.respond(model, processor, image, depth_path, question, 200)


def test_an_estimator_that_cannot_load_is_a_page_error_with_the_reason(loaded, examples, monkeypatch):
    model, _ = loaded
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # a hub id, offline: as on a cut-off Space
    processor = reconfigured(loaded[1], depth_estimator="no-such-user/no-such-depth-model")
    image = Image.open(examples[0][0])
    with pytest.raises(OSError) as plain_error:
        app.answer_question(model, processor, image, QUESTION)
    with pytest.raises(gr.Error) as page_error:
        app.respond(model, processor, image, None, QUESTION)
    assert page_error.value.message == str(plain_error.value)
    assert page_error.value.message.startswith(
        "Could not load the depth estimator 'no-such-user/no-such-depth-model' (is it downloaded, or the hub "
        "reachable?). Pass depth= explicitly or configure another estimator. Cause: "
    )


def test_the_page_shows_unexpected_errors(loaded, monkeypatch):
    """`show_error`: an error that is not a `gr.Error` still reaches the page with its message."""
    launched = {}
    monkeypatch.setattr(app, "load_model", lambda model_id: loaded)
    monkeypatch.setattr(gr.Blocks, "launch", lambda demo, **kwargs: launched.update(kwargs))
    app.main(["--model", "some/model"])
    assert launched["show_error"] is True


def test_colour_map_shows_unmeasured_pixels_grey(loaded):
    depth = np.tile(np.linspace(1.0, 9.0, 64, dtype=np.float32), (48, 1))
    holes = depth.copy()
    holes[:, :32] = 0
    grey = np.array([153, 153, 153], np.uint8)  # the colour map's "bad" colour, 0.6 grey
    full, with_holes = (np.asarray(app.depth_colour_map(d)) for d in (depth, holes))
    assert full.shape == with_holes.shape == (400, 520, 3)
    grey_pixels = [int((image == grey).all(-1).sum()) for image in (full, with_holes)]
    assert grey_pixels[1] - grey_pixels[0] > 10_000  # half of the ~300x220-pixel map


def test_examples_are_rendered_scenes_with_their_exact_answers(loaded, examples):
    _, processor = loaded
    assert len(examples) == len(app.EXAMPLE_SCENES)
    for (rgb_path, depth_path, question, exact, hfov), (index, question_type) in zip(examples, app.EXAMPLE_SCENES):
        sample = make_sample("test", index, 0, app.EXAMPLE_SIZE, questions_per_scene=12)
        expected = next(q for q in sample.questions if q.question_type == question_type)
        assert (question, exact) == (expected.question, expected.answer)
        assert hfov == round(sample.metadata["camera"]["hfov_deg"], 1) and 40 <= hfov <= 80
        np.testing.assert_array_equal(np.asarray(Image.open(rgb_path)), sample.rendering.rgb)
        millimetres = np.rint(sample.rendering.depth * 1000).astype(np.uint16).astype(np.float32)
        np.testing.assert_array_equal(decode_depth_png(app.read_depth_file(depth_path)), millimetres / 1000)


def test_main_needs_a_model(monkeypatch, capsys):
    monkeypatch.delenv("MODEL_ID", raising=False)
    with pytest.raises(SystemExit):
        app.main([])
    assert "--model DIR_OR_ID or the MODEL_ID environment variable" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# The page in a real browser
# ----------------------------------------------------------------------------------------------------------------
def test_page_in_headless_chromium_answers_like_the_answer_function(loaded, model_dir, examples, tmp_path):
    if not space_demo.browser_available():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the browser test: .ci/run installs Debian's chromium and chromium-driver.")
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    model, processor = loaded
    rgb_path, depth_path, _, _, _ = examples[0]
    image = Image.open(rgb_path)
    expected = app.answer_question(model, processor, image, QUESTION, app.read_depth_file(depth_path))
    wide_depth = tmp_path / "wide_depth.png"
    wide_depth.write_bytes(encode_depth_png(np.ones((50, 150), np.float32)))
    with pytest.raises(ValueError) as wide_error:
        app.answer_question(model, processor, image, QUESTION, app.read_depth_file(wide_depth))

    with (
        space_demo.running_app(model_dir, tmp_path / "app.log") as url,
        space_demo.chromium(tmp_path / "chromium") as driver,
    ):
        space_demo.open_page(driver, url)
        space_demo.upload(driver, rgb_path, depth_path)
        reply = space_demo.ask(driver, QUESTION)
        driver.save_screenshot(str(tmp_path / "space_demo.png"))

        assert reply["errors"] == [], reply
        assert reply["answer"] == expected.text
        assert reply["depth_note"] == app.describe_depth(expected, processor)
        shown = np.asarray(Image.open(io.BytesIO(space_demo.fetch(reply["colour_map_url"]))).convert("RGB"))
        np.testing.assert_array_equal(shown, np.asarray(app.depth_colour_map(expected.depth)))

        # A depth map of another aspect ratio: the processor's message in an error toast, and the page lives on.
        space_demo.open_page(driver, url)
        space_demo.upload(driver, rgb_path, wide_depth)
        reply = space_demo.ask(driver, QUESTION)
        assert len(reply["errors"]) == 1 and str(wide_error.value) in reply["errors"][0], reply

        # An example row fills the page with its rendered scene, question and exact answer.
        space_demo.open_page(driver, url)
        assert space_demo.click_example(driver, 1) == {"question": examples[1][2], "exact_answer": examples[1][3]}

    with Image.open(tmp_path / "space_demo.png") as screenshot:
        assert screenshot.format == "PNG" and screenshot.width == 1280
