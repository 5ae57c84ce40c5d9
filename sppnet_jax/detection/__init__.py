"""Detection building blocks: boxes, VOC evaluation, proposals, SVMs and box regression."""
