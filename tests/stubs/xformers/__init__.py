"""A stand-in for an xFormers wheel built for another torch and Python: importing it logs xFormers' own
warning (as 0.0.35 did on the H200 with torch 2.11.0+cu130, Python 3.12), and every attention call raises the
dispatcher's NotImplementedError (``xformers.ops.fmha``)."""

import logging

logging.getLogger("xformers").warning(
    "WARNING[XFORMERS]: xFormers can't load C++/CUDA extensions. xFormers was built for:\n"
    "    PyTorch 2.10.0+cu128 with CUDA 1208 (you have 2.11.0+cu130)\n"
    "    Python  3.10.19 (you have 3.12.3)\n"
    "  Please reinstall xformers (see https://github.com/facebookresearch/xformers#installing-xformers)\n"
    "  Memory-efficient attention, SwiGLU, sparse and more won't be available.")
