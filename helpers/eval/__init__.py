"""Layer 3, from images to numbers: batched cached features (features), zero-shot heads (zeroshot),
linear probes (probes), metrics incl. calibration, retrieval recall, PSNR and SSIM (metrics)."""
