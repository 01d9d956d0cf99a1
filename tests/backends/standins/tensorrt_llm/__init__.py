"""A stand-in for TensorRT-LLM 1.x (``import tensorrt_llm``), implementing exactly the API surface
lem.backends.tensorrt uses: ``__version__``, ``LLM`` (the PyTorch runtime, 1.x's default),
``SamplingParams``, ``tensorrt_llm.llmapi`` and ``tensorrt_llm._tensorrt_engine.LLM``.
See llmapi/__init__.py for the sources followed and the simulated executor."""

from .llmapi import LLM
from .sampling_params import SamplingParams

__version__ = "1.2.1"
__all__ = ["LLM", "SamplingParams", "__version__"]
