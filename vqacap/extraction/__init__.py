"""Extraction at cluster scale: region features of many images on every device of every node, through Lightning's
`Trainer.predict`, into resumable per-process shards merged into one region store.

    data.py     which images a process extracts (dealt by id), decoded in DataLoader workers, batched by aspect ratio
    module.py   the detector as a LightningModule, the writer of each process's shard, `extract_folders`
    loading.py  the detector of a file (vqacap checkpoint, published .caffemodel, converted file)
    shards.py   shard files, the fingerprint of what extracted them, their checked merge (torch-free)

The commands on top: `vqacap extract` (argparse), `vqacap-extract` (Hydra, so that `hydra/launcher=slurm` submits it),
`vqacap prepare merge`. The region choice itself is vqacap.models.regions' (generate_tsv's), imported, not copied.
"""
