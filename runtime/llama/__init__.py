"""llama.cpp: bindings and backends, the model, the one generation engine, chat templates,
memory and hardware."""
