"""Host memory of training data at CASIA-WebFace scale, measured rather than extrapolated.

Writes a synthetic pack with CASIA-WebFace's shape (10,575 identities, 494,414 crops) whose
crops are real aligned JPEGs taken round-robin from a smaller pack, so sizes are realistic.
Then, in fresh processes, measures the resident memory (VmHWM / RSS from /proc) of

1. ``build_train_set`` on that pack (the index, labels, identity names: what every
   training process holds), and
2. the same plus one full pass reading every crop's bytes, as an epoch does (the pack's
   pages then count as resident: clean, shared file cache the kernel can drop).

Usage::

    python eval/measure_pack_memory.py --source /tmp/dev_train_q85.fkpack --work /tmp/casia_synth.fkpack
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

IDENTITIES, CROPS = 10_575, 494_414


def _write(source: Path, out: Path) -> None:
    from facekd.data.pack import Pack, write_pack

    src = Pack(source)
    names = [f"{i:07d}" for i in range(IDENTITIES)]

    def items():
        for k in range(CROPS):
            label = k * IDENTITIES // CROPS
            yield f"{names[label]}/{k:03d}.jpg", label, src.raw(k % len(src))

    write_pack(out, items(), names, src.template, {"synthetic": f"CASIA-WebFace shape from {source}"})


def _status() -> dict:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            fields[k] = int(v.split()[0]) // 1024  # MiB
    return fields


def _probe(pack: str, read_all: bool) -> dict:
    import torch  # noqa: F401 - the training process has torch loaded; count it

    from facekd.train.config import DataCfg
    from facekd.train.data import build_train_set

    base = _status()
    data = build_train_set(DataCfg(train=[pack]), "112x96")
    after_index = _status()
    touched = 0
    if read_all:
        for i in range(len(data)):
            touched += len(data.raw(i))
    end = _status()
    return {"crops": len(data), "identities": len(data.identities), "torch_imported_mib": base["VmRSS"],
            "after_index_mib": after_index["VmRSS"], "peak_mib": end["VmHWM"], "end_rss_mib": end["VmRSS"],
            "bytes_read_mib": touched // 2**20}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, help="a real pack to take crops from")
    p.add_argument("--work", type=Path, required=True, help="where the synthetic pack goes (~1.3 GB)")
    p.add_argument("--probe", choices=["index", "epoch"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe:
        print(json.dumps(_probe(str(args.work), args.probe == "epoch")))
        return 0
    if not args.work.is_file():
        _write(args.source, args.work)
    print(f"{args.work}: {args.work.stat().st_size / 2**20:.0f} MiB")
    for probe in ("index", "epoch"):
        out = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--probe", probe],
                             capture_output=True, text=True, check=True).stdout
        print(probe, out.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
