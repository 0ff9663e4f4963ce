"""SMART moved to `hf_multitask.regularizers.smart`; this module re-exports it for code that imports it from here."""

from .regularizers.smart import (  # noqa: F401
    PAIRS,
    EmaTeacher,
    SmartRegularizer,
    ascent_step,
    ema_update_,
    embedding_forward,
    init_noise,
    smart_divergence,
)
