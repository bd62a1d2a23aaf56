"""Hand checkpoints to other engines: config.json fixes for vLLM / SGLang, GGUF files for llama.cpp / Ollama."""
