"""backend=openai: any OpenAI-compatible server, running or launched by lem."""
