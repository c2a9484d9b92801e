"""Run the peer tools on a folder and print their predicted duplicate pairs as JSON.

Runs inside the peers' own virtualenv (benchmarks/.peers-venv, made by dedup_quality.py), so
their dependencies never touch the project's. Usage: python _peers.py FOLDER"""

import json
import logging
import sys
from pathlib import Path

logging.disable(logging.WARNING)


def imagededup_pairs(folder: Path, thresholds: list[int]) -> dict:
    from imagededup.methods import PHash

    phasher = PHash(verbose=False)
    encodings = phasher.encode_images(image_dir=str(folder), recursive=True)
    out = {}
    for t in thresholds:
        found = phasher.find_duplicates(encoding_map=encodings, max_distance_threshold=t)
        out[str(t)] = sorted({tuple(sorted((a, b))) for a, dups in found.items() for b in dups})
    return out


def cleanvision_pairs(folder: Path) -> list:
    from cleanvision import Imagelab

    lab = Imagelab(data_path=str(folder))
    lab.find_issues({"near_duplicates": {}, "exact_duplicates": {}}, verbose=False)
    pairs = set()
    for kind in ("near_duplicates", "exact_duplicates"):
        for group in lab.info[kind]["sets"]:
            names = sorted(str(Path(p).relative_to(folder)) for p in group)
            pairs |= {(a, b) for i, a in enumerate(names) for b in names[i + 1 :]}
    return sorted(pairs)


if __name__ == "__main__":
    folder = Path(sys.argv[1]).resolve()
    result = {"imagededup_phash": imagededup_pairs(folder, list(range(0, 21))), "cleanvision": cleanvision_pairs(folder)}
    print(json.dumps(result))
