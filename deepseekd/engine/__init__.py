"""The engine room: the only code that imports vLLM (in vllm_engine.py, loaded lazily)."""
