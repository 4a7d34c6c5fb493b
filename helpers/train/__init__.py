"""Layer 4, training: the one loop with resume, DDP and budgets (loop), supervised classifiers
(supervised), CLIP fine-tuning objectives, freezing and WiSE-FT (clip_objectives), the learned
super-resolution model of notebook 03 (super_resolution)."""
