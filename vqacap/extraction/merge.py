"""`vqacap prepare merge SHARD... --out STORE`: the shard stores of a distributed extraction (`vqacap extract --devices
N`, `vqacap-extract`) merged into one region store, as the extraction's first process does at its end.

Shards recorded with a different detector or options, or two shards holding the same image, are refused in one line
before anything is written; images already in the store are kept (a merge interrupted after its commit). With
`--images`, every image of those folders must be in the merged store. A folder argument means its `shard-*.h5` files
(`<store>.shards/`); a shard a killed run left uncommitted is committed first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vqacap.data.store import RegionStore, RegionStoreError
from vqacap.extraction import shards


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "shards",
        nargs="+",
        type=Path,
        metavar="SHARD",
        help="shard stores, or folders of them (<store>.shards)",
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="STORE", help="region store to create or extend"
    )
    parser.add_argument(
        "--images", nargs="+", metavar="DIR", help="check that every image of these folders is in the store"
    )
    parser.add_argument("--remove", action="store_true", help="delete the shards once merged and checked")


def run(args: argparse.Namespace) -> int:
    try:
        found = []
        for path in args.shards:
            if path.is_dir():
                found += sorted({Path(str(p).removesuffix(".partial")) for p in path.glob("shard-*.h5*")})
            else:
                found.append(path)
        for note in filter(None, map(shards.settle, found)):
            print(note)
        requested = None
        if args.images:
            from vqacap.images import ImageError, image_files, image_id_from_name

            try:
                requested = {image_id_from_name(p) for p in image_files(args.images)} - {None}
            except ImageError as err:
                raise RegionStoreError(str(err)) from None
        added, already = shards.merge(found, args.out, requested=requested)
        if args.remove:
            shards.remove(found)
    except RegionStoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = len(RegionStore(args.out)) if args.out.is_file() else 0
    print(
        f"{args.out}: merged {added} images from {len(found)} shards ({already} already there), {total} in all"
    )
    return 0
