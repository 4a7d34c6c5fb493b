"""CLIP lab: the one package behind the notebook suite. Layers, each importing only those above it
in this list (a test walks the import graph):

    core/         config (folders, device, autocast), storage (atomic writes, hashes, locks),
                  distributed (torchrun), errors (every error class), memory (freed memory
                  kept for reuse: put in force here, on import), compiled, layout
    data/         images, samples, classnames, layouts (folders, split CSVs, splits), eurosat,
                  captions, synthetic, transforms, prompts
    models/       registry (the spec grammar: kind -> parse / load / missing / url), clip_models
                  (openai:, file:, scratch:), backbones (torchvision:), upsamplers (SRGAN, ESPCN)
    eval/         features (batched, cached), zeroshot, probes, metrics (incl. PSNR/SSIM)
    train/        loop (resume, DDP, budgets), supervised, clip_objectives, super_resolution
    results/      records (facets, masking of untrained results), tables, plots
    settings.py   the typed configuration schema;  profiles.py  loading it, and the preflight
    experiments/  one module per notebook (run + its EXPERIMENT declaration) and the registry
    report.py     supplementary/ rebuilt from records;  suite.py  the headless runner
"""

from helpers.core import memory as _memory

__version__ = "0.1.0"

_memory.apply()  # CLIPLAB_MALLOC: training steps and batches reuse freed memory instead of faulting it in
