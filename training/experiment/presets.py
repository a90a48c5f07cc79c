"""The experiment's presets: every size, step count and rate of one run of the experiment, shared by its arms."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


RGB_ONLY_QUESTION_TYPES = ("color", "shape", "count", "left_right", "above_below")
METRIC_QUESTION_TYPES = ("distance_to_camera", "distance_between", "object_height", "object_width", "point_depth")


@dataclass(frozen=True)
class Preset:
    """Every size, step count and rate of one experiment; arms share all of it."""

    base_size: str  # training.tiny.BASE_SIZES
    image_size: int  # rendered side in pixels (the processor then caps images at `max_pixels`)
    train_scenes: int  # stage 0 and stage 2 rows come from these scenes (6 questions each)
    val_scenes: int
    pair_scenes: int  # stage 1 RGB-D pairs (the "10x" ablation uses ten times as many)
    test_questions: int | None  # None: the whole fixed test set (1,200)
    stage0_steps: int
    stage0_lr: float
    align_steps: int
    align_lr: float
    align_batch: int
    sft_steps: int
    sft_lr: float
    batch: int
    lora_r: int
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = ("none", "concat", "add", "image")
    # (name, alignment level or None, pair multiplier) of the alignment ablation, run on the `add` arm.
    alignment_ablations: tuple[tuple[str, str | None, int], ...] = (
        ("add-unaligned", None, 1),
        ("add-global", "global", 1),
        ("add-dense-10x", "dense", 10),
    )
    ablation_seeds: tuple[int, ...] = (0,)  # the ablations are read against the main comparison's seed spread
    # None: the fixed test set (`training.make_world --preset test`: 200 scenes, 100 questions per type). A number: that
    # many test scenes, rendered like the fixed set (its 200 scenes are the first of them), for a measurement whose
    # spread over seeds is less the luck of 100 questions.
    test_scenes: int | None = None
    # Arms run only on `ablation_seeds`, beside the main comparison's `arms` (the baselines reported on one seed).
    single_seed_arms: tuple[str, ...] = ()
    threads: int | None = None  # torch threads per stage; None: the machine's cores shared by the parallel runs
    eval_batch: int = 32
    # SFT+evaluation runs that go at once after stage 0 and alignment. A small model leaves a GPU mostly idle, so
    # several runs share it; each gets an equal share of the CPU cores for its threads and DataLoader workers.
    parallel_runs: int = 1
    dataloader_workers: int = 0  # per training stage; >0 moves decoding and processing off the training loop
    extra_train_args: tuple[str, ...] = field(default=())
    # Stage 0a: steps of dense object pre-training of the from-scratch RGB tower before stage 0 (0: none). Without it
    # a base trained on questions alone at these scales answers from the prior (see training.pretrain_vision).
    vision_pretrain_steps: int = 0
    # Stage 2 trains the whole language model (plus the depth merger and gate; the RGB tower and depth encoder blocks
    # stay frozen) instead of a LoRA adapter on it. LoRA preserves a pretrained base; the from-scratch stand-in bases
    # here have no such skills to preserve, and LoRA on them stays at the answer priors (results/experiment_cpu_long).
    sft_full_finetune: bool = False
    # Stage 2 trains (every arm, same rows) and evaluation reads only these question types; None: all twelve. A
    # 1 M-parameter stand-in spreads one pass over twelve types too thin to learn any one metric type from depth.
    sft_question_types: tuple[str, ...] | None = None
    # Question types of the test set that are evaluated; None: `sft_question_types` plus the RGB-only types when
    # stage 2 trains on a subset (those check that depth does not hurt), else all.
    eval_question_types: tuple[str, ...] | None = None
    # How the depth path starts in stage 2 (training.sft's flags; the defaults are its own):
    # `depth_merger_zero_init` zeroes the depth projector's last layer, so a fresh model still equals the base while
    # the projector gets the full gradient; `depth_gate_init` opens the 'add' gate (tanh(1.0) = 0.76) instead of
    # the zero gate through which the projector's gradient is ~0; `depth_lr` is the depth modules' own rate;
    # `train_depth_encoder` trains the depth encoder's blocks too (full fine-tuning only).
    depth_merger_zero_init: bool = False
    depth_gate_init: float | None = None
    depth_lr: float | None = None
    train_depth_encoder: bool = False
    # Issue 14's H2, LLaVA's stage 1: steps of a projector warm-up before stage 2 (0: none), in which only the depth
    # modules train (language model frozen) on stage 2's rows; stage 2 then starts from the warmed-up model.
    depth_warmup_steps: int = 0
    # Stage 1 for the main arms: "dense" (token-matched InfoNCE), "global", or None (no alignment: the depth encoder
    # stays the copy of the RGB tower it is initialised as, which keeps the most metric information, see
    # shared/FACTS.md "Where depth's information goes").
    main_alignment: str | None = "dense"
    # ---- issue 21's protocol (the defaults keep the earlier presets' behaviour, so their results still reproduce) ----
    # The test world: None, the fixed `make_world --preset test` set (224 px, test split of seed 0); a seed, the test
    # split of that world seed rendered exactly like the training world (`image_size`, `test_scenes` scenes), checked
    # by training.experiment.protocol before anything trains and refused if its scenes were explored.
    test_world_seed: int | None = None
    # Which sets the trained models are read on: recipes are chosen on the validation world (`val_scenes` >= 1,000
    # gives >= 500 questions per type), the test world is read once per final run.
    evaluate_val: bool = False
    evaluate_test: bool = True
    # Seeds vary the whole pipeline (stage 0a, stage 0, alignment and stage 2 each get the seed), not only stage 2's
    # data order and initialisation; off: one shared base and alignment (seed 0), as in issue 14's runs.
    whole_pipeline_seeds: bool = False
    # Depth controls for every depth arm of `arms`: evaluated with depth removed and with another scene's depth, and,
    # for the arms listed here, a capacity-matched control trained alike on uninformative (constant) depth maps.
    depth_controls: bool = False
    capacity_controls: tuple[str, ...] = ()
    # The stand-in base's tokenizer: None, `training.tiny`'s (merges from a short generic text: "red" is "re" + "d");
    # "world": merges from the world's own questions and answers (`training.world.question_corpus`), a token per
    # word as in a real model's vocabulary, and questions under half as long (tests/test_world.py).
    tokenizer_corpus: str | None = None
    # How that tokenizer writes numbers: "merged", as its merges fall ("5.31" is 5 . 31: a length's decimals are one
    # of 100 tokens, which the world tokenizer's stand-in never learned: its decimals after "0." are uniform); "single",
    # every digit its own token as in Qwen2's own tokenizer ("5.31" is 5 . 3 1).
    tokenizer_digits: str = "merged"
    # Stages 0 and 2 train on each scene's unmarked questions as the turns of one conversation (the image encoded
    # once per scene: training.experiment.conversations); evaluation still asks each question alone.
    scene_conversations: bool = False
    # Arms whose seed-0 model is exported as a Hub-ready folder (`training.export`) into `out/models/<arm>`, small
    # enough to commit, so anyone can re-evaluate them on a freshly rendered test set.
    shipped_arms: tuple[str, ...] = ()
    # What every depth arm's depth path sees (`configuration_depth.DEPTH_INPUTS`): "depth", or "points" (camera-frame
    # x, y, z from depth and each image's intrinsics, issue 22). Its alignments have their own folders
    # (`align/<name>-points-seed<s>`), so a points run can share another run's data and stage 0 (`--shared-stages`).
    depth_input: str = "depth"
    # What stage 0 (the stand-in base) is trained on: "rgb", the RGB-only question types (`RGB_ONLY_QUESTION_TYPES`,
    # a base that has never seen a metric or choice answer); "all", every question type from RGB alone, as a real
    # pretrained VLM can already answer "how far is the car" in metres (from RGB priors) and pick one of two named
    # objects. Stage 2 then has only to learn to read depth, not the tasks themselves.
    stage0_question_types: str = "rgb"
    # Stage 1's reconstruction term (`training.align --reconstruction_weight`): 0, contrastive only; above 0, each
    # depth token also reconstructs its own pooled encoder input, which keeps the camera in `points` tokens but cost
    # depth reading end to end (issue 22, `results/reconstruction_alignment/`). Its alignments have their own folders
    # (`align/<name>-recon<w>-...`).
    align_reconstruction_weight: float = 0.0


# The preset fields that do not decide how a main arm's stage-2 run of a given seed trains or is read (which runs
# there are, and how many at once): two presets that agree on every other field make the same such runs, so one may
# reuse the other's (`Experiment.link_shared_runs`).
PRESET_FIELDS_BESIDE_THE_RUNS = frozenset(
    {
        "seeds", "arms", "single_seed_arms", "alignment_ablations", "ablation_seeds", "capacity_controls",
        "shipped_arms", "parallel_runs", "threads", "dataloader_workers", "evaluate_val", "evaluate_test",
    }
)  # fmt: skip


PRESETS = {
    # CPU minutes. Small images (112 px: 4x4 merged tokens) keep a mini model fast on 2 cores.
    "tiny": Preset(
        base_size="mini",
        image_size=112,
        train_scenes=600,
        val_scenes=40,
        pair_scenes=300,
        test_questions=None,
        vision_pretrain_steps=300,
        stage0_steps=600,
        stage0_lr=2e-3,
        align_steps=200,
        align_lr=2e-3,
        align_batch=32,
        sft_steps=600,
        sft_lr=2e-3,
        batch=16,
        lora_r=32,
        threads=1,
    ),
    # CPU, about 100 minutes on 2 cores without the ablations (stages 0a and 0 about 25 minutes, then six rounds of
    # two SFT runs and their evaluations): `tiny`'s model on 8x the scenes, with its RGB tower pre-trained on object
    # tokens first (stage 0a; on questions alone the base never learns to look at the image), 5x `tiny`'s stage-0
    # samples and the same SFT samples. Two runs at a time, one core each.
    "cpu": Preset(
        base_size="mini",
        image_size=112,
        train_scenes=5000,
        val_scenes=40,
        pair_scenes=1000,
        test_questions=None,
        vision_pretrain_steps=600,
        stage0_steps=1500,
        stage0_lr=1e-3,
        align_steps=300,
        align_lr=2e-3,
        align_batch=32,
        sft_steps=300,
        sft_lr=2e-3,
        batch=32,
        lora_r=32,
        parallel_runs=2,
    ),
    # GPU (one H100, one 10-minute command): the calibration model of shared/FACTS.md (~13 M parameters) at 224 px
    # (64 image tokens). Six runs share the GPU at a time (a model this small leaves it mostly idle; the CPU cores
    # that decode and process the batches are the limit). The main comparison (`--no-ablations`: 3 seeds x 4 arms)
    # and the ablations (`--arms add --seeds 0`) are one 10-minute command each.
    "small": Preset(
        base_size="small",
        image_size=224,
        train_scenes=6000,
        val_scenes=100,
        pair_scenes=3000,
        test_questions=None,
        vision_pretrain_steps=300,
        stage0_steps=600,
        stage0_lr=1e-3,
        align_steps=200,
        align_lr=5e-4,
        align_batch=128,
        sft_steps=500,
        sft_lr=1e-3,
        batch=128,
        lora_r=64,
        eval_batch=300,
        parallel_runs=6,
        dataloader_workers=2,
        extra_train_args=("--bf16", "true"),
    ),
}
# `cpu` with stage 2 as full fine-tuning of the language model, at stage 0's rate, for every arm alike.
# 900 steps at batch 32 is one pass over the 30,000 training rows.
PRESETS["cpu-full"] = replace(PRESETS["cpu"], sft_full_finetune=True, sft_lr=1e-3, sft_steps=900)
# Issue 14's recipe (results/experiment_cpu_depth/): `cpu-full` with
# - stage 2 on the three depth-readable question types only (same rows for both arms; the RGB-only types are still
#   evaluated), for 1,800 steps (twice `cpu-full`'s: the depth arm's answers follow the truth more with training);
# - the depth path opened: the projector's last layer zero (a fresh model is still exactly the base) with the gate at
#   tanh(1) = 0.76, so the projector gets the full gradient from the first step (H1);
# - the seed's dense alignment kept (on seed 0 at 900 steps it doubled how closely the answers follow the truth);
# - a test set of 1,000 scenes (500 questions per type: with 100, one seed's δ₁ moves by ±0.05 with the draw).
# On seed 0 only: the other fusions under the same recipe (concat vs add is the seed's ablation), SpatialBot's
# depth-as-image and direct RGB-D input (the seed's baselines), and the alignment ablations (none, 10x pairs).
PRESETS["cpu-depth"] = replace(
    PRESETS["cpu-full"],
    sft_question_types=("distance_to_camera", "point_depth", "closer"),
    sft_steps=1800,
    depth_merger_zero_init=True,
    depth_gate_init=1.0,
    main_alignment="dense",
    arms=("none", "add"),
    single_seed_arms=("rgbd", "concat", "image"),
    test_scenes=1000,
    alignment_ablations=(("add-unaligned", None, 1), ("add-dense-10x", "dense", 10)),
)
# The exploration run before it (runs/experiment_cpu_depth, results/experiment_cpu_depth/steps900/): 900 steps and no
# alignment for the main arms; every fusion, baseline and alignment ablation on seed 0.
PRESETS["cpu-depth-900"] = replace(
    PRESETS["cpu-depth"],
    sft_steps=900,
    main_alignment=None,
    alignment_ablations=(("add-dense", "dense", 1), ("add-dense-10x", "dense", 10)),
)
# Issue 21's protocol on issue 14's recipe: stage 2 on all 12 question types (no forgetting), test rendered like
# training from an unexplored world seed, recipes chosen on 1,000 validation scenes (500 questions per type), the
# constant baseline and the depth controls beside every arm, and seeds that vary the whole pipeline. `cpu-fair`
# evaluates on validation only (the preset to choose a recipe with); `cpu-fair-final` reads the test set instead,
# once, with the recipe chosen there. The choices, each measured on the 1,000-scene validation world
# (results/explore_fair/, results/points_probe/):
# - the world tokenizer (a token per word): `add` reads depth with it (removing depth costs 0.16 / 0.18 δ₁ on distance /
#   point depth), with the default tokenizer it hardly does (-0.01 / +0.01);
# - stage 0 on every question type from RGB: the same `add` level (0.384 / 0.363 against 0.378 / 0.377), and "closer"
#   answers readable at 27% instead of 10%, with RGB-only at 0.366 / 0.259;
# - camera-frame points as the depth input: ahead of z-only depth on both types (0.451 / 0.413 against 0.409 / 0.360,
#   3 stage-2 seeds, each lead just under twice the larger seed std).
PRESETS["cpu-fair"] = replace(
    PRESETS["cpu-depth"],
    tokenizer_corpus="world",
    stage0_question_types="all",
    depth_input="points",
    sft_question_types=None,
    val_scenes=1000,
    test_scenes=1000,
    test_world_seed=1,
    evaluate_val=True,
    evaluate_test=False,
    whole_pipeline_seeds=True,
    depth_controls=True,
    capacity_controls=("add",),
    shipped_arms=("none", "add"),
    single_seed_arms=(),
    alignment_ablations=(),
)
PRESETS["cpu-fair-final"] = replace(PRESETS["cpu-fair"], evaluate_val=False, evaluate_test=True)
# The rest of issue 21's comparisons under the final recipe, on seed 0 (its stage 0 and alignment shared from the main
# comparison's folder: `--shared-stages`): the other fusions and the seed's two baselines (depth as a second picture,
# direct RGB-D input), and the alignment ablations (none; 10x the pairs). `none` and `add` are the main comparison's
# runs, linked in rather than trained again, so the report reads every arm against them. H2 (a depth-only warm-up
# of the projector) and H3 (a trainable depth encoder) are `--depth-warmup-steps` and `--train-depth-encoder` runs of
# `--arms add` in folders of their own.
PRESETS["cpu-fair-final-extras"] = replace(
    PRESETS["cpu-fair-final"],
    seeds=(0,),
    single_seed_arms=("concat", "adapter", "rgbd", "image"),
    alignment_ablations=(("add-unaligned", None, 1), ("add-dense-10x", "dense", 10)),
    capacity_controls=(),
    shipped_arms=(),
)
# The README's demo: `tiny` at smoke scale, one seed, RGB-only against depth `add`, no ablations (part of a 10-minute
# CPU job). The sequential stages get every core; the two SFT runs and their evaluations go side by side, one core each.
PRESETS["demo"] = replace(
    PRESETS["tiny"],
    threads=None,
    parallel_runs=2,
    train_scenes=250,
    val_scenes=20,
    pair_scenes=150,
    test_questions=240,
    vision_pretrain_steps=100,
    stage0_steps=250,
    align_steps=80,
    sft_steps=250,
    seeds=(0,),
    arms=("none", "add"),
    alignment_ablations=(),
)
# `small` at smoke scale: checks the GPU pipeline (bf16, DataLoader workers, parallel runs) in about a minute.
PRESETS["small-smoke"] = replace(
    PRESETS["small"],
    train_scenes=300,
    val_scenes=20,
    pair_scenes=150,
    test_questions=200,
    vision_pretrain_steps=10,
    stage0_steps=20,
    align_steps=10,
    sft_steps=20,
    seeds=(0,),
)
