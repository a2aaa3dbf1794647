"""Export: saved models (JSON spec + state_dict) and chosen-trial export."""

from .artifacts import load_model, read_spec, save_model

__all__ = ["load_model", "read_spec", "save_model"]
