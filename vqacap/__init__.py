"""vqacap: Bottom-Up and Top-Down attention for captioning and VQA."""

__version__ = "0.1.0"
