"""A small Karpathy split file (dataset_coco.json, dataset_flickr30k.json) as `vqacap prepare coco-captions` reads it."""

from __future__ import annotations

import json

CAPTIONS = {  # split -> [(cocoid, [raw captions])]
    "train": [(9, ["A dog runs on the grass.", "A brown dog running.", "The dog is on grass"])],
    "restval": [(25, ["A dog and a cat.", "Two animals, a dog and a cat!"])],
    "val": [(30, ["A zebra stands alone."])],
    "test": [(42, ["A giraffe eats leaves.", "giraffe"])],
}


def karpathy_file(tmp_path, dataset: str = "coco") -> tuple:
    images, imgid, sentid = [], 0, 0
    for split, entries in CAPTIONS.items():
        for cocoid, raws in entries:
            folder = "val2014" if split != "train" else "train2014"
            sentences = []
            for raw in raws:
                tokens = raw.lower().replace(".", "").replace(",", "").replace("!", "").split()
                sentences.append({"tokens": tokens, "raw": raw, "imgid": imgid, "sentid": sentid})
                sentid += 1
            image = {
                "filepath": folder,
                "sentids": [s["sentid"] for s in sentences],
                "filename": f"COCO_{folder}_{cocoid:012d}.jpg",
                "imgid": imgid,
                "split": split,
                "sentences": sentences,
                "cocoid": cocoid,
            }
            if dataset != "coco":
                del image["cocoid"], image["filepath"]
                image["filename"] = f"{1000 + cocoid}.jpg"
            images.append(image)
            imgid += 1
    path = tmp_path / f"dataset_{dataset}.json"
    path.write_text(json.dumps({"images": images, "dataset": dataset}))
    return path
