"""llm-mesh worker."""
