"""`training.answer_probe`: where a metric answer is lost between the depth tokens and the answer's first token."""

import json

import numpy as np
import pytest
import torch

from training import answer_probe
from training.align.probe import region_log_depth
from training.benchmarks import read_benchmark
from training.evaluate import batch_inputs


def test_a_state_that_holds_the_answer_is_read_exactly():
    samples = read_benchmark_like(40)
    truth = np.log([s.answer_value for s in samples])
    noise = np.random.default_rng(0).normal(size=(40, 2, 8))
    noise[:, 1, 0] = truth  # layer 1 holds the answer in one feature; layer 0 does not
    layers = answer_probe.probe_answers(noise, samples)
    assert [row["layer"] for row in layers] == [0, 1]
    assert layers[1]["r2"] == pytest.approx(1.0, abs=1e-3) and layers[1]["delta1"] == 1.0
    assert layers[0]["r2"] < 0.5


def read_benchmark_like(count: int):
    from training.benchmarks import SpatialSample

    values = np.exp(np.random.default_rng(1).uniform(0, 3, count))
    return [
        SpatialSample(f"scene{i // 2}/{i}", "q", "point_depth", f"{v:.2f} m", float(v)) for i, v in enumerate(values)
    ]


def test_the_probe_reads_the_states_and_regions_evaluation_asks_for(open_add_folder, world_dir, tmp_path):
    out = tmp_path / "probe.json"
    report = answer_probe.main(
        [
            "--model",
            str(open_add_folder),
            "--data",
            str(world_dir),
            "--out",
            str(out),
            "--question-types",
            "point_depth",
            "--image-token-scenes",
            "8",
        ]  # fmt: skip
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    samples = [s for s in read_benchmark("world", world_dir).samples if s.question_type == "point_depth"]
    from training.evaluate import load_model_and_processor

    model, processor = load_model_and_processor(open_add_folder, "cpu")
    layers = model.config.text_config.num_hidden_layers + 1  # the embeddings, then every layer
    per_type = report["per_type"]["point_depth"]
    assert per_type["questions"] == len(samples) and len(per_type["layers"]) == layers
    # The kept state is the last prompt position's, as a forward of that question alone gives it.
    states = answer_probe.answer_states(model, processor, samples[:1], batch_size=1)
    inputs, _ = batch_inputs(processor, samples[:1], "", True)
    with torch.no_grad():
        alone = model(**inputs, output_hidden_states=True).hidden_states
    assert states.shape == (1, layers, model.config.text_config.hidden_size)
    np.testing.assert_allclose(states[0], torch.stack([h[0, -1] for h in alone]).numpy(), rtol=1e-5, atol=1e-6)
    # Image tokens: one row per merged region with valid depth, its target that region's mean log-depth.
    one_per_scene = list({s.id.rsplit("/", 1)[0]: s for s in read_benchmark("world", world_dir).samples}.values())
    token_states, targets, images = answer_probe.image_token_states(model, processor, one_per_scene[:2])
    expected = []
    for sample in one_per_scene[:2]:
        log_depth, valid = region_log_depth(batch_inputs(processor, [sample], "", True)[0]["depth_values"], 2)
        expected.append(log_depth[valid])
    np.testing.assert_allclose(targets, np.concatenate(expected), rtol=1e-6)
    assert token_states.shape == (len(targets), layers, model.config.text_config.hidden_size)
    assert sorted(set(images.tolist())) == [0, 1]
    assert len(report["image_tokens"]["layers"]) == layers


def test_the_marked_pixel_s_token_is_the_one_that_covers_it(open_add_folder, world_dir, monkeypatch):
    """`marker_token_states` takes the image token whose region holds the marked pixel: that pixel's depth is one of
    the depth values of that token's patches (and the state is that token's, layer by layer)."""
    from training.benchmarks import load_depth
    from training.evaluate import load_model_and_processor

    model, processor = load_model_and_processor(open_add_folder, "cpu")
    samples = [s for s in read_benchmark("world", world_dir).samples if s.question_type == "point_depth"][:4]
    markers = [s.marker for s in samples]
    assert all(marker is not None for marker in markers)  # the reader keeps each row's marked pixel
    chosen = []
    original = model.forward

    def spy(**inputs):
        outputs = original(**inputs)
        chosen.append((inputs["depth_values"], inputs["input_ids"], outputs.hidden_states))
        return outputs

    monkeypatch.setattr(model, "forward", spy)
    states = answer_probe.marker_token_states(model, processor, samples, batch_size=4)
    (depth_values, input_ids, hidden), merge = chosen[0], processor.image_processor.merge_size
    tokens_per_image = depth_values.shape[0] // merge**2 // len(samples)
    for row, (sample, (u, v)) in enumerate(zip(samples, markers)):
        grid_w = load_depth(sample.depth).shape[1] // (14 * merge)
        token = (v // (14 * merge)) * grid_w + u // (14 * merge)
        group = depth_values.reshape(len(samples), tokens_per_image, -1)[row, token]
        assert load_depth(sample.depth)[v, u] in group.numpy()
        position = (input_ids[row] == model.config.image_token_id).nonzero()[token, 0]
        np.testing.assert_array_equal(states[row], torch.stack([h[row, position] for h in hidden]).numpy())
