"""What Stage 2 reports: about the depth path, next to the loss, the gate and projector scalars (`depth_fusion_stats`)
and, for the last training batch, how large depth's contribution is next to the RGB tokens (`DepthFusionProbe`); at
the end, the run's losses and speed (`summarise_training`).
"""

from __future__ import annotations

import math

import torch

from configuration_depth import DEPTH_ADAPTERS, DEPTH_ENCODER_MERGER, DEPTH_GATE, DEPTH_PATCH_EMBED


def depth_fusion_stats(model: torch.nn.Module) -> dict[str, float]:
    """Scalars of the depth path to log during training: mean and max |tanh(gate)| ('add'), and the Frobenius norm
    of the depth projector's last layer (only trainable copies: a PEFT wrapper also holds the frozen original)."""
    stats = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.endswith(f"{DEPTH_GATE}.gate") or f"{DEPTH_GATE}.modules_to_save" in name:
            gate = parameter.detach().float().tanh().abs()
            stats.update(depth_gate_abs_mean=float(gate.mean()), depth_gate_abs_max=float(gate.max()))
        elif DEPTH_ENCODER_MERGER in name and name.endswith("mlp.2.weight"):
            stats["depth_merger_out_norm"] = float(parameter.detach().float().norm())
        elif DEPTH_PATCH_EMBED in name and name.endswith(".weight"):
            stats["depth_patch_embed_norm"] = float(parameter.detach().float().norm())
        elif DEPTH_ADAPTERS in name and name.endswith("up.weight"):  # all adapters' output layers together
            norm = float(parameter.detach().float().norm())
            stats["depth_adapter_up_norm"] = math.hypot(stats.get("depth_adapter_up_norm", 0.0), norm)
    return stats


class DepthFusionProbe:
    """Forward hooks that keep, for the last training batch, the mean L2 norm per token of what the RGB path computes
    and of what depth adds to it, at the modules the fusion table names (`DepthFusion.probe`: e.g. 'add' compares the
    RGB image tokens with tanh(gate) * projector output, 'rgbd' the RGB patch embedding with the depth channel's)."""

    def __init__(self, model: torch.nn.Module):
        self.norms: dict[str, float] = {}
        modules = dict(model.named_modules())
        # A PEFT wrapper keeps the module's name as a suffix. Without depth, the RGB image tokens alone.
        rgb_suffix, depth_suffix = model.config.fusion.probe or ("visual.merger", None)
        for name, module in modules.items():
            if name.endswith(rgb_suffix):
                module.register_forward_hook(self._hook("rgb_token_norm"))
            elif depth_suffix is not None and name.endswith(depth_suffix):
                module.register_forward_hook(self._hook("depth_added_norm"))

    def _hook(self, key: str):
        def hook(module, inputs, output):
            if isinstance(output, tuple) and output:  # the side adapters: the first one's residual
                output = output[0]
            if torch.is_tensor(output):
                self.norms[key] = float(output.detach().float().norm(dim=-1).mean())

        return hook

    def stats(self) -> dict[str, float]:
        stats = dict(self.norms)
        if "rgb_token_norm" in stats and "depth_added_norm" in stats and stats["rgb_token_norm"] > 0:
            stats["depth_to_rgb_norm_ratio"] = stats["depth_added_norm"] / stats["rgb_token_norm"]
        return stats


def summarise_training(trainer, result) -> dict:
    """Losses and speed of a finished `trainer.train()` (`result`), printed too: the eval loss before training (from
    `eval_on_start`) and after it (the last evaluation if `eval_strategy` just ran one, else a new one)."""
    print_ = trainer.accelerator.print
    summary = {}
    first_eval = next((entry for entry in trainer.state.log_history if "eval_loss" in entry), None)
    if trainer.args.eval_on_start and first_eval is not None:
        summary["eval_loss_before"] = first_eval["eval_loss"]
    summary.update(
        train_loss=result.metrics["train_loss"],
        train_steps=result.global_step,
        train_steps_per_second=result.metrics["train_steps_per_second"],
        train_samples_per_second=result.metrics["train_samples_per_second"],
    )
    if trainer.eval_dataset is not None:
        last_eval = next((entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry), None)
        if last_eval is not None and last_eval["step"] == result.global_step:  # eval_strategy just did it
            summary["eval_loss_after"] = last_eval["eval_loss"]
        else:
            summary["eval_loss_after"] = trainer.evaluate()["eval_loss"]
    print_(
        f"Trained {result.global_step} steps at {summary['train_steps_per_second']:.3f} steps/s "
        f"({summary['train_samples_per_second']:.2f} samples/s), mean train loss {summary['train_loss']:.4f}"
    )
    if "eval_loss_before" in summary and "eval_loss_after" in summary:
        before, after = summary["eval_loss_before"], summary["eval_loss_after"]
        drop = 100 * (1 - after / before) if before > 0 and math.isfinite(before) else float("nan")
        print_(f"Eval answer loss {before:.4f} -> {after:.4f} ({drop:.1f}% lower)")
    return summary
