"""The alignment `Trainer`: contrastive loss, retrieval as its evaluation, checkpoints without the frozen RGB tower."""

from __future__ import annotations

import math

from transformers import Trainer, TrainerCallback

from training.align.model import RGB_TOWER_PREFIX
from training.align.retrieval import retrieval_metrics


class SetDatasetEpoch(TrainerCallback):
    """Tells the training dataset the epoch, for its per-epoch augmentation (accelerate forwards `set_epoch` to the
    sampler only). `state.epoch` is whole at an epoch's start, and the checkpoint's epoch when resuming mid-epoch."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(int(math.floor(state.epoch + 1e-9)))


class DepthAlignmentTrainer(Trainer):
    """`Trainer` for `DepthAlignmentModel`: contrastive loss, retrieval evaluation, checkpoints without the RGB tower.

    `record_local_losses=True` keeps this rank's loss of every micro-batch in `local_losses` (the logged loss is the
    mean over ranks); it costs a device sync per step, so it is for tests and diagnostics.
    """

    def __init__(self, *args, record_local_losses: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.record_local_losses = record_local_losses
        self.local_losses: list[float] = []
        if self.train_dataset is not None:
            self.add_callback(SetDatasetEpoch(self.train_dataset))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # InfoNCE is a mean over the batch's pairs: `num_items_in_batch` (a token count for LM losses) does not apply,
        # and the Trainer divides it by the gradient accumulation steps itself.
        outputs = model(**inputs)
        if self.record_local_losses and model.training:
            self.local_losses.append(float(outputs.loss.detach()))
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def get_decay_parameter_names(self, model) -> list[str]:
        # Like open_clip: no weight decay on the temperature nor on any gain or bias (parameters of fewer than 2
        # dimensions; the Trainer's own name patterns miss the vision blocks' RMSNorm gains `norm1`/`norm2`).
        low_dimensional = {name for name, parameter in model.named_parameters() if parameter.ndim < 2}
        return [name for name in super().get_decay_parameter_names(model) if name not in low_dimensional]

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # The frozen RGB tower is reloaded from the base model, never from a checkpoint: leave it out of every save.
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        state_dict = {
            name: tensor.contiguous() for name, tensor in state_dict.items() if not name.startswith(RGB_TOWER_PREFIX)
        }
        super()._save(output_dir, state_dict=state_dict)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logit_scale = self.accelerator.unwrap_model(self.model).loss_fn.logit_scale
            logs["logit_scale"] = round(float(logit_scale.detach().float().exp()), 4)
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Depth->RGB retrieval on the held-out pairs (see `retrieval_metrics`), as the Trainer's evaluation.

        Every rank embeds all held-out pairs (a retrieval set is small), so the metrics are the same on every rank,
        and sharded models (FSDP) run the same collectives everywhere.
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("DepthAlignmentTrainer.evaluate needs an eval_dataset of held-out pairs.")
        with self.accelerator.autocast():
            # On the model's own device: before `train()` a DeepSpeed/FSDP model has not been placed by the Trainer.
            metrics = retrieval_metrics(self.model, dataset, self.data_collator, self.args.per_device_eval_batch_size)
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in metrics.items()}
        self.log(dict(metrics))  # a copy: `log` adds the epoch to the dict it is given
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
