"""``python -m bench.child module:function '{"kwarg": ...}'``: run one
measurement in this fresh interpreter and print its result for the parent."""
from __future__ import annotations

import importlib
import json
import sys

from bench.common import emit


def main() -> None:
    target, raw = sys.argv[1], sys.argv[2]
    module_name, _, func_name = target.partition(":")
    func = getattr(importlib.import_module(module_name), func_name)
    emit(func(**json.loads(raw)))


if __name__ == "__main__":
    main()
