"""The checkpoint side of [`MultitaskTrainer`]: resuming from the last *complete* checkpoint (or not at all, once the
run is complete), saving the sampler's, regularisers' and aggregators' state with every checkpoint
(`hf_multitask.checkpointing`), and errors that name the checkpoint that could not be loaded."""

from __future__ import annotations

import os

from transformers import TrainerState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, rotate_checkpoints
from transformers.utils import logging

from .checkpointing import (
    CheckpointError,
    finished_at,
    last_complete_checkpoint,
    load_training_state,
    save_training_state,
    verify_checkpoint,
)

logger = logging.get_logger(__name__)


class TrainerCheckpoints:
    """Mixed into [`MultitaskTrainer`] before `transformers.Trainer`, whose `train` and checkpoint methods it
    extends; the trainer keeps the states to save in `self._stateful` (`{name: object with state_dict()}`)."""

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """As `Trainer.train`; `resume_from_checkpoint=True` picks the last *complete* checkpoint of `output_dir`
        (the Trainer's own choice is the highest-numbered one, even if the run died while writing it), and a
        checkpoint given by path is checked first: an incomplete or truncated one raises a [`CheckpointError`]
        that names the file."""
        self._best_loaded_step = None  # set by `_load_best_model` (trainer_card.py) for the model card
        self.train_sampler = None  # a resumed plan is checked against this run's sampler, not an earlier train()'s
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise CheckpointError(f"No complete checkpoint to resume from in {self.args.output_dir}")
            logger.info(f"Resuming from {resume_from_checkpoint}, the last complete checkpoint")
        elif resume_from_checkpoint:
            verify_checkpoint(str(resume_from_checkpoint))
        done = finished_at(self.args, resume_from_checkpoint)
        if done is not None:  # the Trainer would train one step past max_steps (mid-epoch) and save it
            return self._finished_run(str(resume_from_checkpoint), done)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def _finished_run(self, checkpoint: str, step: int) -> TrainOutput:
        """Resuming a checkpoint at `max_steps`: its weights and state are loaded, nothing is trained (the returned
        `training_loss` is NaN: no step ran); with `load_best_model_at_end`, the best checkpoint's weights, as the
        run that trained them ended with."""
        best = self.args.load_best_model_at_end
        logger.warning(f"{checkpoint} is at step {step}, max_steps is {self.args.max_steps}: the run is complete, "
                       f"nothing to train; the model holds the {'best' if best else 'last'} checkpoint's weights")
        self._load_from_checkpoint(checkpoint)
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
        if best and self.state.best_model_checkpoint and os.path.isdir(self.state.best_model_checkpoint):
            self._load_best_model()
        return TrainOutput(self.state.global_step, float("nan"), {})

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, then our training state and the manifest (written last), then the Hub push
        (`push_to_hub`) and the rotation.

        Old checkpoints are deleted, and a checkpoint is pushed, only once the new one is complete, so a kill at any
        moment leaves at least one complete checkpoint behind, and the Hub never gets one without our state.
        """
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        push, self.args.push_to_hub = self.args.push_to_hub, False
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit, self.args.push_to_hub = limit, push
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        self.accelerator.wait_for_everyone()  # every rank has written its files (RNG states)
        states = {name: obj.state_dict() for name, obj in self._stateful.items()}  # all ranks: FSDP2 gathers
        if self.args.should_save:
            save_training_state(folder, {} if self.args.save_only_model else states)
            if push:
                self._push_from_checkpoint(folder)  # (rank 0 only; an upload in the background, as the Trainer's)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        try:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors, torch or JSON errors that do not say which checkpoint
            raise CheckpointError(f"{resume_from_checkpoint}: cannot load the model weights: "
                                  f"{type(e).__name__}: {e}") from e
        self._load_training_state(resume_from_checkpoint)

    def _load_training_state(self, checkpoint: str) -> None:
        """Our state of `checkpoint` into `self._stateful` (the sampler's plan is checked as it loads)."""
        states = load_training_state(checkpoint)
        for name, obj in self._stateful.items():
            if name in states:
                obj.load_state_dict(states[name])
            elif not getattr(obj, "optional", False):
                logger.warning(f"{checkpoint} has no saved state for {name!r}: it starts afresh")

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        try:
            super()._load_optimizer_and_scheduler(checkpoint)
        except Exception as e:
            raise CheckpointError(f"{checkpoint}: cannot load the optimizer or scheduler state (optimizer.pt, "
                                  f"scheduler.pt): {type(e).__name__}: {e}") from e
        if checkpoint is not None and getattr(self, "is_deepspeed_enabled", False):
            # under DeepSpeed the Trainer loads the weights with deepspeed_load_checkpoint, never calling
            # _load_from_checkpoint: our state would start afresh and the sampler's plan go unchecked
            self._load_training_state(checkpoint)
