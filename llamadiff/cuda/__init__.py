"""CUDA sampler sources (``sampler.cu`` / ``sampler.h``), compiled into the extension when
llamadiff is built with ``LLAMADIFF_CUDA=1``."""
