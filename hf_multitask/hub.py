"""Uploading a saved model to the Hub: one commit with its weights, config, code files, tokenizer and model card."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import EntryNotFoundError

from .inference import add_tokenizer
from .model_card import MODEL_CARD_NAME, is_replaceable_card, is_replaceable_text, write_model_card


def push_folder(model, folder: str | os.PathLike, repo_id: str, commit_message: str | None = None,
                private: bool | None = None, token: str | bool | None = None, create_pr: bool = False,
                revision: str | None = None, commit_description: str | None = None, tags: Sequence[str] | None = None,
                card: Mapping[str, Any] | None = None, tokenizer=None):
    """Upload a saved model's `folder` to the Hub repo `repo_id` as one commit (`HfApi.upload_folder`), with its
    tokenizer ([`hf_multitask.inference.add_tokenizer`]) and hf-multitask's card in it, unless the folder's
    README.md or the repo's on the Hub is the user's own: that one is kept (the folder's first).

    Args:
        model: The [`MultitaskModel`] saved in `folder`.
        folder: Its directory.
        repo_id: The Hub repo (created when missing).
        commit_message, private, token, create_pr, revision, commit_description: As in `push_to_hub`.
        tags: Extra Hub tags for the card.
        card: More [`hf_multitask.model_card.render_model_card`] arguments (metrics, training arguments).
        tokenizer: The tokenizer to upload (see [`hf_multitask.inference.add_tokenizer`]).
    """
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    tokenizer_included = add_tokenizer(model, folder, tokenizer)
    try:
        remote = str(ModelCard.load(repo_id, token=token))
    except EntryNotFoundError:
        remote = None
    local = os.path.join(folder, MODEL_CARD_NAME)
    if not is_replaceable_card(local):
        pass  # the user's own README.md in the folder (`save_pretrained(..., push_to_hub=True)`): kept, uploaded
    elif remote is not None and not is_replaceable_text(remote):
        with open(local, "w", encoding="utf-8") as f:
            f.write(remote)  # the user's own card on the Hub stays
    else:
        card = {**(card or {}), **({"tags": list(tags)} if tags else {}), "tokenizer_included": tokenizer_included}
        write_model_card(folder, model, overwrite=True, model_name=repo_id.split("/")[-1], model_id=repo_id, **card)
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message or "Upload model",
                             commit_description=commit_description, create_pr=create_pr, revision=revision)
