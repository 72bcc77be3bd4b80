"""The model simulator: an OpenAI-compatible HTTP server on loopback (`server`) with realistic
answers (`answers`) and fault injection (`faults`). It plays an outside provider, so it imports
nothing of the worker, the model client or extraction.
"""
