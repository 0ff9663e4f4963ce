"""The model-card side of [`MultitaskTrainer`]: `create_model_card` and `save_model` write hf-multitask's card
(tasks, the latest evaluation's metrics, the training arguments, the techniques used; `hf_multitask.model_card`)."""

from __future__ import annotations

from transformers.utils import logging

from .model_card import latest_eval_metrics, write_model_card

logger = logging.get_logger(__name__)


class TrainerModelCard:
    """Mixed into [`MultitaskTrainer`] before `transformers.Trainer`, whose `save_model` it extends."""

    def create_model_card(self, language: str | None = None, license: str | None = None,
                          tags: str | list[str] | None = None, model_name: str | None = None,
                          finetuned_from: str | None = None, tasks: str | list[str] | None = None,
                          dataset_tags: str | list[str] | None = None, dataset: str | list[str] | None = None,
                          dataset_args: str | list[str] | None = None) -> None:
        """Write hf-multitask's model card to `args.output_dir/README.md`, in place of the parent's `TrainingSummary`
        draft: tasks, the metrics of the latest evaluation in `state.log_history`, the training arguments and the
        techniques used (see `hf_multitask.model_card`). A README.md that hf-multitask did not write is kept.

        Args:
            language, license, tags, model_name: As in `Trainer.create_model_card` (front matter and title).
            finetuned_from: The encoder's Hub id (`base_model`); guessed from the encoder's config when `None`.
            dataset_tags: Hub dataset ids for the front matter.
            tasks, dataset, dataset_args: Accepted for the parent's signature; the tasks and data come from the model.
        """
        if self.is_world_process_zero():
            tags = [tags] if isinstance(tags, str) else tags
            datasets = [dataset_tags] if isinstance(dataset_tags, str) else dataset_tags
            self._write_model_card(self.args.output_dir, language=language, license=license, tags=tags,
                                   model_name=model_name, base_model=finetuned_from, datasets=datasets,
                                   **self._card_kwargs())

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The parent's save, with the model card (latest evaluation's metrics, training arguments) written once:
        by the model's `save_pretrained`, or after the save for a peft-wrapped model, whose save writes no card."""
        output_dir = output_dir or self.args.output_dir
        wrapped, model = self.accelerator.unwrap_model(self.model), self.multitask_model
        card = self._card_kwargs() if self.args.should_save else None
        model.card_context = card if wrapped is model else None
        try:
            super().save_model(output_dir, _internal_call=True)  # the push, if any, comes after the card
        finally:
            model.card_context = None
        if card is not None and wrapped is not model:
            self._write_model_card(output_dir, **card)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _load_best_model(self) -> None:
        """The parent's (`load_best_model_at_end`); the card then reports the loaded checkpoint's evaluation."""
        super()._load_best_model()
        self._best_loaded_step = self.state.best_global_step

    def _card_kwargs(self) -> dict:
        best = getattr(self, "_best_loaded_step", None)
        if best is not None:  # the weights are the best checkpoint's, not the last step's
            metrics, step = latest_eval_metrics(self.state.log_history, self.specs, step=best)
            source = (f"the Trainer's evaluation of the best checkpoint (step {step}; metric_for_best_model "
                      f"{self.args.metric_for_best_model}), whose weights these are (load_best_model_at_end)")
        else:
            metrics, step = latest_eval_metrics(self.state.log_history, self.specs)
            source = f"the Trainer's latest evaluation (step {step})"
        # Trainer._save writes the tokenizer after the model's save_pretrained, which writes the card
        saves = self.processing_class is not None or getattr(self.data_collator, "tokenizer", None) is not None
        saves_tokenizer = {"tokenizer_included": True} if saves else {}
        return {"metrics": metrics, "training_args": self.args, "trained_steps": self.state.global_step,
                "results_source": source if metrics else None, "model_id": self.hub_model_id or self.args.hub_model_id,
                **saves_tokenizer}

    def _write_model_card(self, output_dir: str, **kwargs) -> None:
        if not write_model_card(output_dir, self.multitask_model, **kwargs):
            logger.warning_once(f"{output_dir}/README.md was not written by hf-multitask: kept, no model card written")
