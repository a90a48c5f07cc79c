"""Stage 2's `SFTTrainer`: a learning rate of its own for the depth modules, and the depth path's diagnostics logged."""

from __future__ import annotations

from trl import SFTTrainer

from training.sft_diagnostics import DepthFusionProbe, depth_fusion_stats
from training.sft_policy import is_depth_parameter


class DepthSFTTrainer(SFTTrainer):
    """`SFTTrainer` with a separate learning rate for the depth modules (`depth_lr`) and the depth path's gate,
    projector and token norms logged next to the loss (so they land in `log_history` and the loss-curve JSON)."""

    def __init__(self, *args, depth_lr: float | None = None, **kwargs):
        self.depth_lr = depth_lr
        super().__init__(*args, **kwargs)
        self.depth_probe = DepthFusionProbe(self.model)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.depth_lr is None:
            return optimizer
        names = {id(parameter): name for name, parameter in (model or self.model).named_parameters()}
        groups = []
        for group in optimizer.param_groups:
            params = group.pop("params")
            depth = [p for p in params if is_depth_parameter(names.get(id(p), ""))]
            rest = [p for p in params if not is_depth_parameter(names.get(id(p), ""))]
            if rest:
                groups.append({**group, "params": rest})
            if depth:
                groups.append({**group, "params": depth, "lr": self.depth_lr})
        optimizer.param_groups = []
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:  # training logs only
            logs = {**logs, **depth_fusion_stats(self.model), **self.depth_probe.stats()}
        super().log(logs, *args, **kwargs)
