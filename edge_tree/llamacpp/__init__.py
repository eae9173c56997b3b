"""llama.cpp access: the ctypes wrapper, GGUF files (header checks, the demo pair, derived
drafts) and the draft/target vocabulary check. The only part of edge-tree that touches ctypes.

llama.cpp's library is loaded here, when edge_tree is imported, before anything of edge-tree
imports numpy: on a CUDA build (nvcc 13, measured on an H200) a process that had imported numpy
first crashed with SIGSEGV inside llama_model_load_from_file, whatever the offload; with
llama.cpp's library loaded first, everything ran (docs/errors.md, "CUDA builds").
"""

import sys

NUMPY_CAME_FIRST = "numpy" in sys.modules and "llama_cpp" not in sys.modules

import llama_cpp  # noqa: E402,F401  (the library loads here: see above)
