"""CLIP lab: shared code for the notebook suite (data, models, cached features, heads, metrics, records, plots)."""

__version__ = "0.1.0"
