"""Layer 0: where things live and how they run (config), atomic writes and hashes (storage),
torchrun helpers (distributed), compiled encoders (compiled), channels-last for conv nets (layout), and
every error class (errors). Imports nothing else of helpers."""
