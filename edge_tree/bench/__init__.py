"""`edge-tree bench`: our modes against each other and against llama.cpp's own C++ tools.

    from edge_tree.bench import run_bench, format_table
    result = run_bench(target, draft, ["ar", "chain:4", "tree"], prompts, max_tokens=64, threads=2)
    print(format_table(result))

The parts: prompts.py (the built-in set, package data), modes.py (--modes), pairs.py (--pair),
tools.py (llama.cpp's tools: command lines and output parsers), session.py (the run and its
aggregation), table.py, command.py (the click command).
"""

from .command import bench
from .session import run_bench
from .table import format_table

__all__ = ["bench", "run_bench", "format_table"]
