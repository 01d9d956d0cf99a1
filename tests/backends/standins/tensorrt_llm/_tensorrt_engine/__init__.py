"""Stand-in for ``tensorrt_llm._tensorrt_engine`` (1.x): the LLM that builds a TensorRT engine."""

from tensorrt_llm.llmapi import _TrtLLM as LLM

__all__ = ["LLM"]
