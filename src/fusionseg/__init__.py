"""fusionseg: multimodal medical image segmentation with fusion strategies compared
under one controlled protocol (brain-tumour MRI and PET/CT)."""

from __future__ import annotations

__version__ = "0.1.0"
