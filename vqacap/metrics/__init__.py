"""Metrics of the tasks: caption metrics (coco-caption), the official VQA accuracy, detection mAP."""

REFUSED = 2  # exit status of `vqacap evaluate captions` and `evaluate vqa` for a refused input
