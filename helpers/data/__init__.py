"""Layer 1, datasets as lists of files: decoding images (images), :class:`Samples` (samples), class
names (classnames), folder layouts and splits (layouts), EuroSAT (eurosat), image-caption sets
(captions), the embedded synthetic set (synthetic), preprocessing (transforms), prompt templates
(prompts). The names below are the ones the rest of the lab uses."""

from helpers.core.errors import BadImageError, DatasetError, SkippedFilesWarning
from helpers.data.captions import CaptionSet, load_captions, load_captions_csv, load_captions_karpathy
from helpers.data.classnames import readable_classnames, resolve_classnames
from helpers.data.eurosat import (
           EUROSAT_CLASSES,
           EUROSAT_CLASSNAMES,
           download_eurosat,
           eurosat_root,
           load_eurosat,
)
from helpers.data.images import IMAGE_EXTENSIONS, find_bad_images, load_rgb, to_rgb
from helpers.data.layouts import (
           SPLIT_NAMES,
           detect_layout,
           load_image_folder,
           scan_class_folders,
           split_of,
           stratified_split,
)
from helpers.data.samples import ImageDataset, Samples

__all__ = ["BadImageError", "CaptionSet", "load_captions", "DatasetError", "EUROSAT_CLASSES", "EUROSAT_CLASSNAMES", "IMAGE_EXTENSIONS",
           "ImageDataset", "Samples", "readable_classnames", "detect_layout", "download_eurosat", "eurosat_root",
           "find_bad_images", "load_captions_csv", "load_captions_karpathy", "load_eurosat", "load_image_folder",
           "load_rgb", "resolve_classnames", "scan_class_folders", "SkippedFilesWarning", "SPLIT_NAMES", "split_of",
           "stratified_split", "to_rgb"]
