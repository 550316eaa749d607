"""The HTTP server: plumbing, routes, OpenAI request checking and shapes, the model worker."""
