"""Builders the tests share: tiny configs and training runs, files written in the public formats (Karpathy, VQA v2,
bottom-up-attention TSV, the prepared detection layout), region tensors, a tiny detector, the reference scorers.

Test modules import these and never each other; pytest fixtures live in tests/conftest.py.
"""
