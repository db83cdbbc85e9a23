"""What a Chinese window adds to a worker's memory under an int8 decoder: the decoder in the
model's format that precision.text_decoder makes on first need (issue 25, lever 4).

The model loaded and converted as the worker does (its memory released after, as the worker
does), the process's RSS measured before and after that decoder is made, beside the weight bytes
of the decoder's blocks in each format.

    .venv/bin/python bench/chinese_decoder_memory.py [--model base] [--precision int8+bf16]
"""

from __future__ import annotations

import argparse

import common
import psutil

from daemon.engine import precision
from daemon.engine.weights import load_model
from daemon.processes.guards import release_memory

MB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="base")
    parser.add_argument("--precision", default="int8+bf16", help="a resolved choice with an int8 decoder")
    args = parser.parse_args()
    model, _ = load_model(args.model, common.MODEL_CACHE)
    model = precision.convert(model, args.precision)
    release_memory()
    process = psutil.Process()
    before = process.memory_info().rss
    made = precision.text_decoder(model, "zh")
    release_memory()
    after = process.memory_info().rss
    print(f"model {args.model}, {args.precision}: RSS {before / MB:.1f} → {after / MB:.1f} MB "
          f"(+{(after - before) / MB:.1f} MB, {after / before:.3f}x) once a Chinese window has come; the decoder's "
          f"blocks {precision.weight_bytes(model.decoder.blocks) / MB:.1f} MB as converted, "
          f"{precision.weight_bytes(made.blocks) / MB:.1f} MB in the model's format, the whole model "
          f"{precision.weight_bytes(model) / MB:.1f} MB")


if __name__ == "__main__":
    main()
