"""A tiny Qwen2.5-VL built offline: byte-level BPE tokenizer, random weights, the real chat template.

No hub is reachable here, so tests and the CPU demo start from this: a plain Qwen2.5-VL folder with exactly the files a
user downloads (config, safetensors, tokenizer, image processor, chat template), only small. Everything downstream
loads it by path, as it would load `Qwen/Qwen2.5-VL-3B-Instruct`.
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil


# Qwen2-VL's chat template (the one Qwen2.5-VL ships), so prompts look exactly like the real model's.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content"
    " or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' "
    "or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)

# Qwen2.5-VL's special tokens, in Qwen's order. `<|depth_pad|>` is deliberately absent: a base tokenizer lacks it and
# Qwen2_5_VLDepthProcessor adds it, as it does to the real one.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Text the BPE merges are learned from: the words of spatial questions and answers, so sequences stay short.
TOKENIZER_CORPUS = (
    "How far is the red green blue yellow purple orange white cyan cube sphere cylinder cone from the camera? "
    "What is the distance between the object and the other one in meters? Which is closer to the camera, "
    "the first or the second? Order these objects from nearest to farthest. How tall is it? How wide is it? "
    "Is it left or right of, above or below? What is the depth at the marked point? What colour is the object? "
    "What shape is it? How many objects are there? Describe the scene. There is a small large object on the floor. "
    "The answer is 0.5 1.25 2.0 3.75 10 meters m cm mm. Yes no left right above below nearest farthest. "
    "You are a helpful assistant. system user assistant 0 1 2 3 4 5 6 7 8 9 . , : ; ? !"
)

TINY_VOCAB_SIZE = 512
# A tokenizer learned from the world's own text (`training.world.question_corpus`): room for a token per word, as in a
# real model's vocabulary.
WORLD_VOCAB_SIZE = 768


def build_tiny_tokenizer(
    vocab_size: int = 384, corpus: str = TOKENIZER_CORPUS, single_digits: bool = False
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes) with Qwen2.5-VL's special tokens and chat template, its merges
    learned from `corpus` (`training.world.question_corpus()` makes every word of the world one token).

    `single_digits`: every digit is a token of its own, as Qwen2's pre-tokenizer splits numbers ("5.31" is 5 . 3 1),
    so a length's first decimal is one of 10 classes; otherwise merges may join digits ("5.31" is 5 . 31, its
    decimals one of 100 classes)."""
    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if single_digits
        else byte_level
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=QWEN_SPECIAL_TOKENS,
        show_progress=False,
    )
    tokenizer.train_from_iterator([corpus] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
        padding_side="left",
    )


# Sizes of the offline stand-in base. "tiny" is what tests use. "mini" and "small" are the experiment's bases trained
# from scratch: "small" is the calibration model of shared/FACTS.md (text 384x4, vision 192x4, ~13 M parameters).
BASE_SIZES = {
    "tiny": {"text": (64, 128, 2, 4, 2), "vision": (32, 64, 2, 2)},
    "mini": {"text": (128, 256, 4, 4, 2), "vision": (64, 128, 4, 2)},
    "small": {"text": (384, 1024, 4, 6, 2), "vision": (192, 512, 4, 4)},
}


def tiny_base_config(tokenizer: PreTrainedTokenizerFast, size: str = "tiny") -> Qwen2_5_VLConfig:
    """Qwen2.5-VL with every size shrunk (`BASE_SIZES`): text (width, MLP, layers, heads, KV heads), vision
    (width, MLP, blocks, heads); the last vision block attends fully, the others in 56-px windows, as Qwen2.5-VL's
    tower alternates window and full attention."""
    token_id = tokenizer.convert_tokens_to_ids
    text_width, text_mlp, text_layers, text_heads, kv_heads = BASE_SIZES[size]["text"]
    vision_width, vision_mlp, vision_blocks, vision_heads = BASE_SIZES[size]["vision"]
    half_head = text_width // text_heads // 2
    mrope_section = [half_head - 2 * (half_head * 3 // 8), half_head * 3 // 8, half_head * 3 // 8]
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": max(TINY_VOCAB_SIZE, len(tokenizer)),
            "hidden_size": text_width,
            "intermediate_size": text_mlp,
            "num_hidden_layers": text_layers,
            "num_attention_heads": text_heads,
            "num_key_value_heads": kv_heads,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
            "bos_token_id": token_id("<|endoftext|>"),
            "eos_token_id": token_id("<|im_end|>"),
            "pad_token_id": token_id("<|endoftext|>"),
        },
        vision_config={
            "depth": vision_blocks,
            "hidden_size": vision_width,
            "intermediate_size": vision_mlp,
            "num_heads": vision_heads,
            "out_hidden_size": text_width,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [vision_blocks - 1],
        },
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=True,
    )


def tiny_image_processor(max_pixels: int = 112 * 112) -> Qwen2VLImageProcessorPil:
    """Qwen2-VL's image processor (PIL backend, no torchvision) capped at `max_pixels` (112² = 64 patches)."""
    return Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=max_pixels)


def save_tiny_base(
    folder: str | Path,
    seed: int = 0,
    size: str = "tiny",
    max_pixels: int = 112 * 112,
    tokenizer_corpus: str | None = None,
    single_digits: bool = False,
) -> Path:
    """Write a plain, small Qwen2.5-VL folder (random weights) with its tokenizer, image processor and template.

    `max_pixels` caps the image processor (112² = 64 patches, 16 tokens; 224² = 256 patches, 64 tokens);
    `tokenizer_corpus`: the text the tokenizer's merges are learned from (default `TOKENIZER_CORPUS`), with
    `WORLD_VOCAB_SIZE` tokens (the model's vocabulary grows to fit); `single_digits`: digits are never merged
    (`build_tiny_tokenizer`)."""
    import torch

    folder = Path(folder)
    tokenizer = (
        build_tiny_tokenizer(single_digits=single_digits)
        if tokenizer_corpus is None
        else build_tiny_tokenizer(WORLD_VOCAB_SIZE, tokenizer_corpus, single_digits=single_digits)
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_base_config(tokenizer, size))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tiny_image_processor(max_pixels).save_pretrained(folder)
    return folder


def save_tiny_depth_anything(
    folder: str | Path, metric: bool = True, keep_aspect_ratio: bool = False, seed: int = 0
) -> Path:
    """Write a tiny random `DepthAnythingForDepthEstimation` folder (~55k parameters, 56-px input, PIL processor).

    `initializer_range=0.2` instead of the usual 0.02: predictions then vary with the image by metres rather than
    micrometres, so comparisons between depth maps mean something. `keep_aspect_ratio=True` makes the preprocessed
    shape follow the aspect ratio, like the real DepthAnything processor.
    """
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    folder = Path(folder)
    config = DepthAnythingConfig(
        backbone_config={
            "model_type": "dinov2",
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 56,
            "patch_size": 14,
            "out_indices": [1, 2],
            "reshape_hidden_states": False,
            "apply_layernorm": True,
        },
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16],
        reassemble_factors=[1, 0.5],
        fusion_hidden_size=8,
        head_hidden_size=8,
        depth_estimation_type="metric" if metric else "relative",
        max_depth=20,
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessorPil(
        size={"height": 56, "width": 56}, keep_aspect_ratio=keep_aspect_ratio, ensure_multiple_of=14, do_pad=False
    ).save_pretrained(folder)
    return folder
