"""deepseekd: a private, auditable OpenAI-compatible LLM appliance around vLLM."""

__version__ = "0.1.0"
